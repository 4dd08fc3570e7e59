"""HTTP service: per-user soft prompts adapted on stored interactions, behind a FastAPI app (``coldprompt serve``)."""

from coldprompt.service.app import create_app
from coldprompt.service.state import ServiceSettings
from coldprompt.service.store import DEFAULT_DB_URL, UserStore

__all__ = ["DEFAULT_DB_URL", "ServiceSettings", "UserStore", "create_app"]
