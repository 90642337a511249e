from django.conf import settings
from django.utils import translation

from .choices import Role
from .models import Membership


def _resolve(request):
    """The organisation the user works in: the remembered one if still a member, else the first."""
    user = request.user
    if not user.is_authenticated:
        return None
    memberships = Membership.objects.filter(user=user, organization__is_active=True).select_related(
        "organization"
    )
    current = None
    if user.current_organization_id:
        current = memberships.filter(organization_id=user.current_organization_id).first()
    if current is None:
        current = memberships.order_by("-organization__is_personal", "created_at").first()
        if current is not None:
            user.current_organization = current.organization
            user.save(update_fields=["current_organization"])
    if current is None:
        request.membership_role = Role.OWNER if user.is_staff else None
        return None
    request.membership_role = current.role
    return current.organization


class CurrentOrganizationMiddleware:
    """Sets ``request.organization`` and ``request.membership_role`` for signed-in users."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership_role = None
        request.organization = _resolve(request)
        return self.get_response(request)


class UserLanguageMiddleware:
    """A signed-in user's remembered language on a browser that has not chosen one (no
    language cookie): after ``LocaleMiddleware`` and ``AuthenticationMiddleware``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if (
            user.is_authenticated
            and user.language
            and settings.LANGUAGE_COOKIE_NAME not in request.COOKIES
            and user.language != request.LANGUAGE_CODE
        ):
            translation.activate(user.language)
            request.LANGUAGE_CODE = user.language
        return self.get_response(request)
