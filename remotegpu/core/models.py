from django.db import models
from django.utils.translation import gettext_lazy as _


class TimeStampedModel(models.Model):
    """Base for every model: when the row was created and last changed."""

    created_at = models.DateTimeField(_("created"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        abstract = True


class AppendOnlyQuerySet(models.QuerySet):
    """Rows are added, never changed or removed (in bulk either)."""

    def update(self, **kwargs):
        raise TypeError(f"{self.model._meta.object_name} rows are append-only.")

    def delete(self):
        raise TypeError(f"{self.model._meta.object_name} rows are append-only.")


class AppendOnlyModel(models.Model):
    """Base for records that are written once: the audit log, the ledger. A correction is a
    new row."""

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError(f"{self._meta.object_name} rows are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError(f"{self._meta.object_name} rows are append-only.")
