from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Sign-up is open unless ``SIGNUP_OPEN`` is false; then only invitation holders may sign up."""

    def is_open_for_signup(self, request):
        if settings.SIGNUP_OPEN:
            return True
        from .views import INVITATION_SESSION_KEY

        return bool(request.session.get(INVITATION_SESSION_KEY))
