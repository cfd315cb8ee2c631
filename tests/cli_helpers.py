"""Helpers shared by the CLI tests (test_cli.py, test_bench_train.py, test_bench_engines.py)."""
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


def check_lines(out):
    """{provider: dict(n, abs, rel, scale, agree, total)} from the bench's check lines."""
    found = {}
    for m in re.finditer(r"check: (.+?) \((\w+)\) vs .+? on (\d+) photos: max abs err (\S+), "
                         r"max rel err (\S+) \(of max \|logit\| (\S+)\), top-1 agreement (\d+)/(\d+)", out):
        found[m.group(1)] = dict(n=int(m.group(3)), abs=float(m.group(4)), rel=float(m.group(5).rstrip(",")),
                                 scale=float(m.group(6)), agree=int(m.group(7)), total=int(m.group(8)))
    return found
