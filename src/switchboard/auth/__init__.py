"""Who is calling: tenant API keys (cached) and the platform admin key."""

from switchboard.auth.admin import AdminAuthenticator
from switchboard.auth.keys import Caller, KeyAuthenticator

__all__ = ["AdminAuthenticator", "Caller", "KeyAuthenticator"]
