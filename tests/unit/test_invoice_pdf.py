"""The invoice PDF from the fonts invoice_service ships, read back with poppler as a reader would."""
import logging
import subprocess
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from common.contract.schemas.invoices import InvoiceSchema
from invoice_service import domain, pdf
from tests import support

ADDRESS = {"line1": "12 Analytical Way", "line2": None, "city": "London", "postal_code": "N1 9GU", "country": "GB"}


def invoice(name="Ada Lovelace", product="Widget"):
    lines = [{"sku": "SKU-A", "quantity": 2, "unit_price": "29.99", "line_total": "59.98"}]
    order = {"id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "status": "shipped", "items": lines,
             "total_amount": "59.98", "currency": "EUR", "shipping_address": ADDRESS}
    customer = {"name": name, "email": "ada@example.com"}
    built = domain.build_invoice("INV-2026-000042", datetime(2026, 11, 3, 8, tzinfo=timezone.utc), order, customer,
                                 {"SKU-A": product}, domain.seller("Shop GmbH", "1 Street, Berlin", "DE123"),
                                 Decimal("0.19"))
    return InvoiceSchema().dump(built)


@pytest.fixture
def no_cjk_font(monkeypatch, tmp_path):
    monkeypatch.setattr(pdf, "CJK_FALLBACK", tmp_path / "DroidSansFallback.ttf")
    pdf.cjk_font.cache_clear()
    yield
    pdf.cjk_font.cache_clear()


def test_the_embedded_fonts_come_with_the_package():
    package = Path(pdf.__file__).parent / "fonts"
    for path in pdf.FONTS.values():
        assert Path(path).parent == package and Path(path).is_file(), path
    assert "Bitstream Vera" in (package / "LICENSE").read_text()


def test_a_pdf_renders_from_the_bundled_fonts_alone(no_cjk_font, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=pdf.log.name):
        assert pdf.cjk_font() is None and pdf.cjk_font() is None
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        f"no CJK font at {pdf.CJK_FALLBACK} (Debian's fonts-droid-fallback)"]  # once

    document = invoice()
    content = pdf.render_invoice(document, pdf.cjk_font())
    assert content.startswith(b"%PDF-")
    text = support.pdf_text(content, tmp_path)
    for expected in ("INVOICE", "INV-2026-000042", "Ada Lovelace", "ada@example.com", "Shop GmbH", "SKU-A", "Widget",
                     "59.98 EUR", "50.40 EUR", "9.58 EUR", "Tax 19 %", document["order_id"], "London"):
        assert expected in text, (expected, text)
    fonts = _embedded_fonts(tmp_path / "invoice.pdf")
    assert {font.split("+")[-1] for font in fonts} == {"DejaVuSansBook", "DejaVuSansBold"}, fonts


def test_without_the_cjk_font_cjk_characters_are_no_error(no_cjk_font, tmp_path):
    content = pdf.render_invoice(invoice(name="Zoë Ωmega 山田", product="Ölkännchen 茶碗"), pdf.cjk_font())
    text = support.pdf_text(content, tmp_path)
    assert "Zoë Ωmega" in text and "Ölkännchen" in text and "?" not in text, text


def _embedded_fonts(path):
    listing = subprocess.run([support.poppler("pdffonts"), str(path)], capture_output=True, text=True,
                             check=True).stdout
    return [line.split()[0] for line in listing.splitlines()[2:]]
