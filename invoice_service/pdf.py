"""An invoice as an A4 PDF, rendered from the invoice in its JSON shape (InvoiceSchema's dump).

Fonts are embedded (only the glyphs used), so any reader shows the same:
DejaVu Sans, shipped in fonts/ under its own license, for Latin, Greek,
Cyrillic and more, and, only when a text needs it and the machine has it,
Droid Sans Fallback (Debian's fonts-droid-fallback) for Chinese, Japanese and
Korean, glyph by glyph. A character no embedded font has shows as an empty
box, never as "?".

`render_invoice` logs nothing, so it may run in a native thread (eventlet's
tpool), where a logging call could contend for eventlet's green locks; call
`cjk_font` from the service's own green thread and pass its answer in.
"""
import functools
import logging
from datetime import datetime
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

from fontTools.ttLib import TTFont
from fpdf import FPDF
from fpdf.fonts import FontFace

log = logging.getLogger(__name__)

FONTS = {style: str(files(__package__) / "fonts" / name)  # fpdf2 style -> file
         for style, name in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf"))}
# Debian installs two files; this one also has Hangul (the "Full" one has not).
CJK_FALLBACK = Path("/usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf")

MARGIN = 18  # mm
GREY = (110, 110, 110)
RULE = (200, 200, 200)
HEADING_FILL = (235, 238, 242)

# fpdf2 warns and fontTools narrates each font subset at INFO from inside rendering, that is from
# the native thread; only their errors (none while rendering: failures raise) get through.
for _library in ("fpdf", "fontTools"):
    logging.getLogger(_library).setLevel(logging.ERROR)


@functools.cache
def cjk_font():
    """The CJK fallback font's path, or None when the machine has none (logged once)."""
    if CJK_FALLBACK.is_file():
        return str(CJK_FALLBACK)
    log.warning("no CJK font at %s (Debian's fonts-droid-fallback): Chinese, Japanese and Korean "
                "characters in invoice PDFs print as empty boxes", CJK_FALLBACK)
    return None


def render_invoice(invoice, cjk_font=None):
    """The PDF of `invoice` (the JSON shape) as bytes; `cjk_font` is a path or None."""
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
        pdf.add_font("Sans", style, path)
    if cjk_font and _needs_fallback(_texts(invoice)):
        pdf.add_font("CJK", "", cjk_font)
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
    return frozenset(TTFont(FONTS[""], lazy=True).getBestCmap())
