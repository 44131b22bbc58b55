"""gateway: the Meterpoort service.

Public surface: ``gateway.settings.Settings``, ``gateway.api.app.create_app`` (the composition
root), the CLI ``gateway.cli.main`` (``python -m gateway``) and the error tree in
``gateway.errors``. The layers and their order are in the README's layout table.
"""
