"""Playbooks: the YAML format (model), loading and static checks, params, templating, JSON Schema.

Importing this package stays cheap; import the module you need (`bot.playbook.loader`, ...).
"""
