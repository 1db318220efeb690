"""Actions: one module per integration, each action a typed params model plus a method.

Importing this package stays cheap; `bot.actions.catalog` imports every shipped action.
"""
