from django import forms
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import style_widgets

from ..models import Region


class RegionForm(forms.ModelForm):
    class Meta:
        model = Region
        fields = ["name", "slug", "location", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        help_texts = {"slug": _("Short name used in URLs and the API, e.g. “eu-west”.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        style_widgets(self)
