"""Text kept as a message id and its arguments is read in each reader's language."""

from django.utils import translation

from remotegpu.core.deferred_text import deferred_text


def test_a_message_id_is_translated_when_read_with_its_arguments():
    with translation.override("zh-hans"):
        assert deferred_text("Bank transfer %(reference)s", {"reference": "TX-1"}) == (
            "银行转账 TX-1"
        )
    with translation.override("en"):
        assert deferred_text("Bank transfer %(reference)s", {"reference": "TX-1"}) == (
            "Bank transfer TX-1"
        )


def test_plain_text_is_shown_as_written():
    """An operator's reason, or text kept before its arguments were: no formatting, so a
    percent sign in it is safe."""
    with translation.override("zh-hans"):
        assert deferred_text("GPU fault: 100% refund") == "GPU fault: 100% refund"
        assert deferred_text("Demo credit") == "演示赠金"
        assert deferred_text("") == ""


def test_arguments_that_do_not_fit_fall_back_to_the_id_not_an_error():
    assert deferred_text("Voucher %(code)s", {"other": "x"}) == "Voucher %(code)s"
