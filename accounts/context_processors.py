from django.conf import settings

from .selectors import organization_list_for_user
from .services.notifications import notification_unread_count


def portal(request):
    """What the base layout needs: the organisation switcher and the bell's count."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    organizations = organization_list_for_user(user)
    if user.is_staff:
        organizations = organizations.filter(memberships__user=user)
    return {
        "current_organization": getattr(request, "organization", None),
        "current_role": getattr(request, "membership_role", None),
        "switchable_organizations": organizations,
        "unread_notifications": notification_unread_count(user),
        "site_url": settings.SITE_URL,
    }
