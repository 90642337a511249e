"""The Simplified Chinese catalogue is complete, compiled, and used by the portal."""

import ast
import gettext
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

from remotegpu.core.testing import require_executable

LOCALE_DIR = Path(settings.BASE_DIR) / "locale"
ZH_PO = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "django.po"
ZH_MO = ZH_PO.with_suffix(".mo")
EN_PO = LOCALE_DIR / "en" / "LC_MESSAGES" / "django.po"

NAVIGATION = {
    "Dashboard": "仪表盘",
    "Members": "成员",
    "API tokens": "API 令牌",
    "SSH keys": "SSH 密钥",
    "Audit log": "审计日志",
    "Sign out": "退出登录",
}
PLACEHOLDER = re.compile(r"%\(\w+\)[sdif]|%[sdif]")


@dataclass
class Entry:
    msgid: str = ""
    msgid_plural: str | None = None
    msgctxt: str | None = None
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    obsolete: bool = False


def parse_po(path: Path) -> tuple[Entry, list[Entry]]:
    """A small .po reader (header, entries): enough for msgctxt, plurals, flags, obsolete."""
    entries: list[Entry] = []
    current = Entry()
    target: tuple[str, int | None] | None = None

    def finish():
        nonlocal current, target
        if target is not None:
            entries.append(current)
        current, target = Entry(), None

    keyword = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr)(?:\[(\d+)\])?\s+(".*")$')
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#~"):
            current.obsolete = True
            line = line[2:].strip()
            if not line:
                continue
        if not line:
            finish()
            continue
        if line.startswith("#,"):
            if target is not None:
                finish()
            current.flags.update(flag.strip() for flag in line[2:].split(","))
            continue
        if line.startswith("#"):
            if target is not None and target[0] == "msgstr":
                finish()
            continue
        match = keyword.match(line)
        if match:
            name, index, literal = match.groups()
            if name in ("msgctxt", "msgid") and target is not None and target[0] == "msgstr":
                finish()
            target = (name, int(index) if index is not None else None)
            text = ast.literal_eval(literal)
        elif line.startswith('"') and target is not None:
            text = ast.literal_eval(line)
        else:
            raise AssertionError(f"{path}: cannot parse line {raw!r}")
        name, index = target
        if name == "msgstr":
            key = index or 0
            current.msgstr[key] = current.msgstr.get(key, "") + text
        elif name == "msgid_plural":
            current.msgid_plural = (current.msgid_plural or "") + text
        else:
            setattr(current, name, (getattr(current, name) or "") + text)
    finish()
    header, *rest = entries
    assert header.msgid == "", f"{path} has no header entry"
    return header, [entry for entry in rest if not entry.obsolete]


def header_fields(header: Entry) -> dict[str, str]:
    lines = header.msgstr[0].splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def catalogue_key(entry: Entry) -> str:
    return f"{entry.msgctxt}\x04{entry.msgid}" if entry.msgctxt is not None else entry.msgid


def test_translation_override_translates_key_strings():
    with translation.override("zh-hans"):
        for english, chinese in NAVIGATION.items():
            assert translation.gettext(english) == chinese
        assert translation.gettext("Organisation") == "组织"
        assert translation.gettext("Sign in") == "登录"
    with translation.override("en"):
        assert translation.gettext("Dashboard") == "Dashboard"


def test_plural_and_placeholders_are_translated():
    with translation.override("zh-hans"):
        assert translation.ngettext("%d user disabled.", "%d users disabled.", 3) % 3 == (
            "已停用 3 个用户。"
        )
        assert translation.gettext("Organisation %(name)s created.") % {"name": "Lab"} == (
            "组织 Lab 已创建。"
        )


@pytest.mark.parametrize(
    ("how", "value"), [("header", "zh-Hans,zh;q=0.9,en;q=0.5"), ("cookie", "zh-hans")]
)
def test_dashboard_navigation_is_chinese(client, owner, how, value):
    client.force_login(owner)
    if how == "cookie":
        client.cookies[settings.LANGUAGE_COOKIE_NAME] = value
        response = client.get(reverse("accounts:dashboard"))
    else:
        response = client.get(reverse("accounts:dashboard"), HTTP_ACCEPT_LANGUAGE=value)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="zh-hans"' in html
    for english, chinese in NAVIGATION.items():
        assert f">{chinese}<" in html, english
    assert ">Dashboard<" not in html


def test_dashboard_stays_english_by_default(client, owner):
    client.force_login(owner)
    html = client.get(reverse("accounts:dashboard"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">Dashboard<" in html
    assert "仪表盘" not in html


def test_language_switcher_sets_chinese(client, owner):
    client.force_login(owner)
    response = client.post(
        reverse("set_language"), {"language": "zh-hans", "next": reverse("accounts:dashboard")}
    )
    assert response.status_code == 302
    assert ">仪表盘<" in client.get(reverse("accounts:dashboard")).content.decode()


def test_the_chosen_language_follows_the_user_to_a_new_browser(client, owner):
    client.force_login(owner)
    client.post(reverse("set_language"), {"language": "zh-hans", "next": "/"})
    owner.refresh_from_db()
    assert owner.language == "zh-hans"

    elsewhere = Client()  # no language cookie, an English browser
    elsewhere.force_login(owner)
    html = elsewhere.get(reverse("accounts:dashboard"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">仪表盘<" in html

    # A browser that chose for itself keeps its choice.
    elsewhere.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    assert ">Dashboard<" in elsewhere.get(reverse("accounts:dashboard")).content.decode()


def test_a_language_the_site_lacks_is_not_remembered(client, owner):
    client.force_login(owner)
    client.post(reverse("set_language"), {"language": "fr", "next": "/"})
    owner.refresh_from_db()
    assert owner.language == ""


def test_anonymous_visitors_switch_language_without_an_account(client, db):
    response = client.post(reverse("set_language"), {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "zh-hans"


def test_djangos_password_length_message_is_chinese():
    """Django 5.2 renamed the message's placeholder; its own zh-hans catalogue kept the old id,
    so ours carries it (remotegpu/core/upstream_messages.py)."""
    from django.contrib.auth.password_validation import MinimumLengthValidator

    with translation.override("zh-hans"):
        message = MinimumLengthValidator(min_length=8).get_error_message()
    assert "8" in message
    assert "password" not in message


def test_allauth_sign_in_page_is_chinese(client, db):
    html = client.get(reverse("account_login"), HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert "登录" in html
    assert ">Sign In<" not in html


def test_chinese_catalogue_is_complete_and_not_fuzzy():
    header, entries = parse_po(ZH_PO)
    assert "fuzzy" not in header.flags
    fields = header_fields(header)
    assert fields["Plural-Forms"] == "nplurals=1; plural=0;"
    assert fields["Content-Type"] == "text/plain; charset=UTF-8"
    assert len(entries) > 100
    problems = []
    for entry in entries:
        if "fuzzy" in entry.flags:
            problems.append(f"fuzzy: {entry.msgid!r}")
        # Chinese has one plural form: msgstr[0] only (msgfmt rejects more with nplurals=1).
        if sorted(entry.msgstr) != [0]:
            problems.append(f"wrong plural forms {sorted(entry.msgstr)}: {entry.msgid!r}")
        if not all(entry.msgstr.values()):
            problems.append(f"untranslated: {entry.msgid!r}")
        if "python-format" in entry.flags or "python-brace-format" in entry.flags:
            wanted = sorted(set(PLACEHOLDER.findall(entry.msgid)))
            for text in entry.msgstr.values():
                if sorted(set(PLACEHOLDER.findall(text))) != wanted:
                    problems.append(f"placeholders differ: {entry.msgid!r} -> {text!r}")
    assert problems == []


def test_english_catalogue_has_the_same_messages():
    _, english = parse_po(EN_PO)
    _, chinese = parse_po(ZH_PO)
    assert {catalogue_key(e) for e in english} == {catalogue_key(e) for e in chinese}


def test_compiled_catalogue_matches_the_po_file():
    """The committed .mo is what the .po says (machines without gettext use it as it is)."""
    _, entries = parse_po(ZH_PO)
    with ZH_MO.open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)._catalog
    expected = {}
    for entry in entries:
        key = catalogue_key(entry)
        if entry.msgid_plural is None:
            expected[key] = entry.msgstr[0]
        else:
            for index, text in entry.msgstr.items():
                expected[(key, index)] = text
    compiled.pop("", None)
    assert compiled == expected


def test_msgfmt_accepts_the_catalogue_and_builds_the_committed_mo(tmp_path):
    msgfmt = require_executable("msgfmt", "install gettext (apt-get install gettext)")
    built = tmp_path / "django.mo"
    result = subprocess.run(
        [msgfmt, "--check", "-o", str(built), str(ZH_PO)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    with built.open("rb") as fresh, ZH_MO.open("rb") as committed:
        assert gettext.GNUTranslations(fresh)._catalog == (
            gettext.GNUTranslations(committed)._catalog
        )
