"""Helpers shared by the CLI tests (test_cli.py, test_bench_train.py)."""
import re


def table_rows(out):
    """[(batch, provider, median ms, images/s, speedup text)] from the printed bench table."""
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s{2}(\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)$",
                     line)
        if m:
            rows.append((int(m.group(1)), m.group(2).strip(), float(m.group(3)), float(m.group(7)), m.group(8)))
    return rows
