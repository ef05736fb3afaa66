"""Screens pushed over the main view: task detail, help, submit and confirm dialogs."""
