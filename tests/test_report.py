"""Evaluation report files: Markdown, CSV and PNG from one table, written atomically."""

from __future__ import annotations

import base64
import copy
import io
import math
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from jobs import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def table() -> report.Table:
    return {
        "title": "Protocol split, k=10",
        "columns": ["precision@10", "ndcg@10", "novelty@10"],
        "rows": {
            "als": {"precision@10": 0.123456, "ndcg@10": 0.2, "novelty@10": 9.5, "map": 0.7},
            "popularity": {"precision@10": 0.05, "ndcg@10": 0.10004, "novelty@10": 3.25},
            "two | tower": {"precision@10": 0.1, "ndcg@10": 0.15, "novelty@10": 7},
        },
        "notes": ["ALS beats popularity by 0.1 NDCG", "same 610 test users"],
    }


def test_writes_four_files_and_returns_their_paths(table, tmp_path):
    out = tmp_path / "reports" / "dt=2024-01-01"  # created if missing
    paths = report.write(table, out)
    assert paths == {ext: str(out / f"evaluation.{ext}")
                     for ext in ("md", "csv", "png", "html")}
    assert all(Path(p).is_file() for p in paths.values())
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.csv",
        "evaluation.html",
        "evaluation.md",
        "evaluation.png",
    ]  # no temporary file left behind
    assert report.write(table, out, stem="weekly")["md"] == str(out / "weekly.md")


def test_markdown_holds_every_model_value_and_note(table, tmp_path):
    md = Path(report.write(table, tmp_path)["md"]).read_text()
    lines = md.splitlines()
    assert lines[0] == "# Protocol split, k=10"
    assert "| model | precision@10 | ndcg@10 | novelty@10 |" in lines
    assert "| als | 0.1235 | 0.2000 | 9.5000 |" in lines
    assert "| popularity | 0.0500 | 0.1000 | 3.2500 |" in lines
    assert "| two \\| tower | 0.1000 | 0.1500 | 7.0000 |" in lines  # pipe escaped
    assert "- ALS beats popularity by 0.1 NDCG" in lines
    assert "- same 610 test users" in lines
    assert "0.7000" not in md  # "map" is not a chosen column
    for model, row in table["rows"].items():
        assert model.replace("|", "\\|") in md
        for column in table["columns"]:
            assert f"{row[column]:.4f}" in md


def test_csv_round_trips_with_pandas(table, tmp_path):
    frame = pd.read_csv(report.write(table, tmp_path)["csv"])
    assert list(frame.columns) == ["model", *table["columns"]]
    assert frame["model"].tolist() == list(table["rows"])
    for _, line in frame.iterrows():
        for column in table["columns"]:
            assert line[column] == table["rows"][line["model"]][column]  # full precision


def test_png_is_a_real_image(table, tmp_path):
    import matplotlib.image as mpimg

    path = report.write(table, tmp_path)["png"]
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[1] == 8 * report.PNG_DPI  # 8 inches wide
    assert image.shape[0] > 200
    assert image.min() < image.max()  # something was drawn


def test_rerun_writes_identical_files(table, tmp_path):
    first = {ext: Path(p).read_bytes() for ext, p in report.write(table, tmp_path).items()}
    second = {ext: Path(p).read_bytes() for ext, p in report.write(table, tmp_path).items()}
    assert second["md"] == first["md"]
    assert second["csv"] == first["csv"]
    assert second["png"] == first["png"]  # no timestamp or software stamp in the PNG
    assert second["html"] == first["html"]
    other = report.write(table, tmp_path / "again")
    assert Path(other["png"]).read_bytes() == first["png"]


class _Page(HTMLParser):
    """Tags, attributes and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def test_html_is_one_page_with_the_table_and_its_plots(table, tmp_path):
    import matplotlib.image as mpimg

    paths = report.write(table, tmp_path)
    page_text = Path(paths["html"]).read_text()
    page = _Page()
    page.feed(page_text)
    # One file: no script, no stylesheet link, nothing fetched from elsewhere.
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe")]
    refs = [a.get("src") or a.get("href") for _, a in page.tags if "src" in a or "href" in a]
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http" not in page_text
    # The plots: the overview (the same bytes as the .png) and one per metric, each a PNG.
    images = [base64.b64decode(r.split(",", 1)[1]) for r in refs]
    assert len(images) == 1 + len(table["columns"])
    assert images[0] == Path(paths["png"]).read_bytes()
    for png in images:
        assert png[:8] == PNG_SIGNATURE
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.min() < pixels.max()
    assert len(set(images)) == len(images)
    # The table: every model, every shown value, the notes; the best of a column bold.
    assert "Protocol split, k=10" in page.text
    for model, row in table["rows"].items():
        assert model in page.text
        for column in table["columns"]:
            assert f"{row[column]:.4f}" in page.text
    assert "<td><b>0.1235</b></td>" in page_text and "<td><b>9.5000</b></td>" in page_text
    assert "0.7000" not in page_text
    assert {"ALS beats popularity by 0.1 NDCG", "same 610 test users"} <= set(page.text)


def test_html_escapes_names(table, tmp_path):
    table["rows"]["<b>x</b> & y"] = table["rows"].pop("popularity")
    table["notes"] = ["a <script>alert(1)</script> note"]
    text = report.html(table)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in text


def test_format_text_is_aligned(table):
    text = report.format_text(table)
    lines = text.splitlines()
    assert lines[0] == "Protocol split, k=10"
    header, rule, *body = lines[2:6]
    assert header.split() == ["model", "precision@10", "ndcg@10", "novelty@10"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert body[0].split() == ["als", "0.1235", "0.2000", "9.5000"]
    # Right-aligned numbers: every value ends where its header ends.
    for line in body:
        assert len(line) == len(header)
    assert lines[-2:] == ["* ALS beats popularity by 0.1 NDCG", "* same 610 test users"]


def test_nan_is_written_and_read_back(table, tmp_path):
    table["rows"]["popularity"]["ndcg@10"] = float("nan")
    paths = report.write(table, tmp_path)
    assert "| popularity | 0.0500 | nan | 3.2500 |" in Path(paths["md"]).read_text()
    frame = pd.read_csv(paths["csv"]).set_index("model")
    assert math.isnan(frame.loc["popularity", "ndcg@10"])


def test_row_missing_a_column_names_model_and_column(table, tmp_path):
    bad = copy.deepcopy(table)
    del bad["rows"]["popularity"]["ndcg@10"]
    with pytest.raises(ValueError, match=r"model 'popularity': missing column 'ndcg@10'"):
        report.write(bad, tmp_path)
    with pytest.raises(ValueError, match="popularity.*ndcg@10"):
        report.format_text(bad)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t["rows"]["als"].update({"ndcg@10": "0.2"}), r"'als'.*'ndcg@10'.*not a number"),
        (lambda t: t["rows"]["als"].update({"ndcg@10": True}), r"'als'.*'ndcg@10'.*not a number"),
        (lambda t: t.update(columns=[]), "columns"),
        (lambda t: t.update(columns=["ndcg@10", "ndcg@10"]), "unique"),
        (lambda t: t.update(rows={}), "rows"),
        (lambda t: t.pop("title"), "title"),
        (lambda t: t.update(notes="one note"), "notes"),
    ],
)
def test_malformed_tables_fail_loudly(table, tmp_path, change, match):
    change(table)
    with pytest.raises(report.ReportError, match=match):
        report.write(table, tmp_path)


def test_bad_stem_is_refused(table, tmp_path):
    with pytest.raises(ValueError, match="stem"):
        report.write(table, tmp_path, stem="../escape")


def test_notes_are_optional(table, tmp_path):
    del table["notes"]
    md = Path(report.write(table, tmp_path)["md"]).read_text()
    assert md.rstrip().splitlines()[-1].startswith("| two")
