from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.include_format_suffixes = False
router.register("images", views.ImageViewSet, basename="image")
router.register("specs", views.SpecViewSet, basename="spec")
router.register("environments", views.EnvironmentViewSet, basename="environment")
router.register(
    "registry-credentials", views.RegistryCredentialViewSet, basename="registry-credential"
)

urlpatterns = router.urls
