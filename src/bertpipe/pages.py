"""Pages for a person to read: the stats and the fill-mask table as HTML tables, which the Snakemake report shows as
they are (its JSON results it only offers for download) and MLflow's UI shows as artifacts."""

import html
import numbers


def table_page(title: str, intro: str, tables: list) -> str:
    """A page of `tables`, each (heading or None, column names, rows of cells). Cells are HTML, escaped by the
    caller (`html.escape`) so that it can mark some up."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>",
             f"<h3>{html.escape(title)}</h3>", f"<p>{html.escape(intro)}</p>"]
    for heading, columns, rows in tables:
        if heading:
            parts.append(f"<h4>{html.escape(heading)}</h4>")
        parts.append('<table border="1" cellpadding="4">')
        parts.append("<tr>" + "".join(f"<th>{html.escape(column)}</th>" for column in columns) + "</tr>")
        parts.extend("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
        parts.append("</table>")
    return "\n".join(parts) + "\n</body></html>\n"


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return html.escape(str(value))
    return f"{value:,}" if isinstance(value, numbers.Integral) else f"{value:.4g}"


def stats_page(title: str, intro: str, stats: dict) -> str:
    """A stats dict as tables: its plain values as one table of (name, value), and each dict of dicts (e.g. the
    splits) as a table with a row per key. Lists (e.g. per-shard details) are left to the JSON file."""
    plain = [[html.escape(key), _number(value)] for key, value in stats.items()
             if not isinstance(value, (dict, list))]
    tables = [(None, ["", "value"], plain)] if plain else []
    for key, value in stats.items():
        if isinstance(value, dict) and value and all(isinstance(row, dict) for row in value.values()):
            columns = list(dict.fromkeys(column for row in value.values() for column in row))
            rows = [[html.escape(name), *(_number(row.get(column, "")) for column in columns)]
                    for name, row in value.items()]
            tables.append((key, ["", *columns], rows))
    return table_page(title, intro, tables)
