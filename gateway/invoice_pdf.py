"""An invoice as an A4 PDF, rendered from the invoice as the API returns it (JSON).

The PDF is another media type of the same resource (GET .../invoice with
`Accept: application/pdf`): the invoice service issues and stores the
invoice, the gateway only lays it out. Rendering is pure CPU and the
gateway's gthread workers are the processes made for blocking work; in a
Nameko service it would stall the service's whole event loop for each PDF.

Fonts are embedded (only the glyphs used), so any reader shows the same:
DejaVu Sans (Debian's fonts-dejavu-core) for Latin, Greek, Cyrillic and
more, and, only when a text needs it, Droid Sans Fallback (Debian's
fonts-droid-fallback) for Chinese, Japanese and Korean, glyph by glyph.
A character neither font has shows as an empty box, never as "?".
"""
import functools
import logging
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from common.contract.errors import ServiceUnavailable

log = logging.getLogger(__name__)

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FONTS = {  # fpdf2 style -> file
    "": DEJAVU / "DejaVuSans.ttf",
    "B": DEJAVU / "DejaVuSans-Bold.ttf",
}
# Debian installs two files; this one also has Hangul (the "Full" one has not).
CJK_FALLBACK = Path("/usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf")
FONT_PACKAGES = "fonts-dejavu-core fonts-droid-fallback"

MARGIN = 18  # mm
GREY = (110, 110, 110)
RULE = (200, 200, 200)
HEADING_FILL = (235, 238, 242)


def render_invoice(invoice):
    """The PDF of `invoice` (the API's JSON shape) as bytes."""
    _check_fonts()
    from fpdf import FPDF  # imported on first use: the gateway's other routes never pay for it

    class InvoicePdf(FPDF):
        def footer(self):
            self.set_y(-14)
            self.set_font("Sans", "", 8)
            self.set_text_color(*GREY)
            self.cell(0, 5, f"{invoice['seller']['name']} · {invoice['number']} · page {self.page_no()}/{{nb}}",
                      align="C")

    pdf = InvoicePdf(orientation="portrait", unit="mm", format="A4")
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.set_auto_page_break(True, margin=22)
    for style, path in FONTS.items():
        pdf.add_font("Sans", style, str(path))
    if _needs_fallback(_texts(invoice)):
        pdf.add_font("CJK", "", str(CJK_FALLBACK))
        pdf.set_fallback_fonts(["CJK"], exact_match=False)  # bold text falls back to the regular face
    issued_at = datetime.fromisoformat(invoice["issued_at"])
    pdf.set_title(f"Invoice {invoice['number']}")
    pdf.set_author(invoice["seller"]["name"])
    pdf.set_creator("order management")
    pdf.set_creation_date(issued_at)  # the same invoice gives the same document
    pdf.add_page()
    _header(pdf, invoice, issued_at)
    _bill_to(pdf, invoice)
    _lines(pdf, invoice)
    _totals(pdf, invoice)
    return bytes(pdf.output())


def _header(pdf, invoice, issued_at):
    seller = invoice["seller"]
    top = pdf.get_y()
    pdf.set_font("Sans", "B", 14)
    pdf.multi_cell(86, 7, seller["name"], new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font("Sans", "", 9)
    pdf.multi_cell(86, 4.6, _address_text(seller["address"]), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.multi_cell(86, 4.6, f"Tax ID: {seller['tax_id']}", new_x="LMARGIN", new_y="NEXT", align="L")
    seller_bottom = pdf.get_y()

    right = pdf.w - MARGIN - 84
    pdf.set_xy(right, top)
    pdf.set_font("Sans", "B", 22)
    pdf.cell(84, 10, "INVOICE", align="R", new_x="LEFT", new_y="NEXT")
    pdf.ln(2)
    for label, value, style, size in (("Invoice number", invoice["number"], "B", 9.5),
                                      ("Issue date", issued_at.strftime("%Y-%m-%d"), "", 9.5),
                                      ("Order", invoice["order_id"], "", 7.5),
                                      ("Currency", invoice["currency"], "", 9.5)):
        pdf.set_x(right)
        pdf.set_font("Sans", "", 8)
        pdf.set_text_color(*GREY)
        pdf.cell(22, 5, label)
        pdf.set_text_color(0)
        pdf.set_font("Sans", style, size)
        pdf.cell(62, 5, value, align="R", new_x="LEFT", new_y="NEXT")
        pdf.set_x(right)
    pdf.set_y(max(seller_bottom, pdf.get_y()) + 8)


def _bill_to(pdf, invoice):
    bill_to = invoice["bill_to"]
    pdf.set_font("Sans", "", 8)
    pdf.set_text_color(*GREY)
    pdf.cell(0, 5, "BILL TO", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_font("Sans", "B", 11)
    pdf.multi_cell(110, 6, bill_to["name"], new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font("Sans", "", 9.5)
    pdf.multi_cell(110, 5, bill_to["email"], new_x="LMARGIN", new_y="NEXT", align="L")
    address = bill_to.get("address")
    if address:
        lines = [address["line1"], address.get("line2"), f"{address['postal_code']} {address['city']}",
                 address["country"]]
        pdf.multi_cell(110, 5, "\n".join(line for line in lines if line), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(8)


def _lines(pdf, invoice):
    from fpdf.fonts import FontFace

    pdf.set_font("Sans", "", 9)
    pdf.set_draw_color(*RULE)
    with pdf.table(col_widths=(34, 76, 14, 25, 25), text_align=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
                   headings_style=FontFace(emphasis="BOLD", fill_color=HEADING_FILL),
                   borders_layout="HORIZONTAL_LINES", line_height=5.2, padding=(1.4, 1.6),
                   width=pdf.epw) as table:
        table.row(("SKU", "Description", "Qty", "Unit price", "Amount"))
        for line in invoice["lines"]:
            table.row((line["sku"], line["name"], str(line["quantity"]), _money(line["unit_price"]),
                       _money(line["line_total"])))
    pdf.ln(4)


def _totals(pdf, invoice):
    currency = invoice["currency"]
    label_x, width = pdf.w - MARGIN - 90, 90
    if pdf.get_y() > pdf.h - 60:
        pdf.add_page()
    rows = (("Subtotal (excluding tax)", invoice["subtotal"], False),
            (f"Tax {_percent(invoice['tax_rate'])} % (included)", invoice["tax_amount"], False),
            ("Total", invoice["total_amount"], True))
    for label, amount, bold in rows:
        pdf.set_x(label_x)
        if bold:
            pdf.set_draw_color(0)
            pdf.line(label_x, pdf.get_y() + 0.5, label_x + width, pdf.get_y() + 0.5)
            pdf.ln(1.5)
            pdf.set_x(label_x)
        pdf.set_font("Sans", "B" if bold else "", 11 if bold else 9.5)
        pdf.cell(55, 7 if bold else 6, label)
        pdf.cell(35, 7 if bold else 6, f"{_money(amount)} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)
    pdf.set_font("Sans", "", 8.5)
    pdf.set_text_color(*GREY)
    pdf.multi_cell(0, 4.5, "Prices include tax. The goods of this order have been shipped. Thank you for your order.",
                   new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_text_color(0)


def _money(amount):
    return f"{Decimal(amount):,.2f}"


def _percent(rate):
    return format((Decimal(rate) * 100).normalize(), "f")


def _address_text(address):
    """SELLER_ADDRESS as lines: its own line breaks, else one line per comma-separated part."""
    if "\n" in address:
        return address.strip()
    return "\n".join(part.strip() for part in address.split(",") if part.strip())


def _texts(invoice):
    bill_to, seller = invoice["bill_to"], invoice["seller"]
    address = bill_to.get("address") or {}
    yield from (seller["name"], seller["address"], seller["tax_id"], bill_to["name"], bill_to["email"])
    yield from (value for value in address.values() if isinstance(value, str))
    for line in invoice["lines"]:
        yield line["sku"]
        yield line["name"]


def _needs_fallback(texts):
    """Whether any character is missing from DejaVu Sans (then the CJK font is embedded too)."""
    covered = _dejavu_characters()
    return any(ord(char) not in covered for text in texts for char in text if char.isprintable())


@functools.cache
def _dejavu_characters():
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(str(FONTS[""]), lazy=True).getBestCmap())


def _check_fonts():
    missing = [str(path) for path in (*FONTS.values(), CJK_FALLBACK) if not path.is_file()]
    if missing:
        log.error("invoice PDFs need the Debian packages %s; missing: %s", FONT_PACKAGES, ", ".join(missing))
        raise ServiceUnavailable("Invoice PDFs cannot be rendered here: a font is missing.",
                                 {"pdf": "font missing", "packages": FONT_PACKAGES})
