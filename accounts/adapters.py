from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Sign-up is open unless ``SIGNUP_OPEN`` is false (closed installations invite only)."""

    def is_open_for_signup(self, request):
        return getattr(settings, "SIGNUP_OPEN", True)
