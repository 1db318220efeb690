"""playbook-bot: incident-response playbooks on Temporal."""
