"""p1_reader."""
