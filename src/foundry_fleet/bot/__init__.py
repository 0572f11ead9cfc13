"""The Discord bot: a thin adapter over the service layer and the control API.

Who may do what is decided by services/access.py and enforced by the control API; the bot only says
who is asking (a Discord user, an admin by role or by config) and renders the answers. `run_bot`
(runner.py) is what the daemon starts.
"""
