"""Test support code shared by integration and e2e tests (fakes of our own interfaces)."""
