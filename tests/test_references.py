"""Every reference in the code and the docs resolves inside the repository.

A newcomer must be able to follow any citation. The project's background notes (a model specification,
performance, training and product notes) are not part of the repository, so code and docs must never
cite them; the facts they contributed live in docs/ in our own words. This test fails on:

- citations of those notes: "spec §…", "the spec", "performance.md", "ideogram4-model.md",
  "ideogram4-training.md", "product.md", "architecture.md" (unless that path exists in the repo), and
  paths into the notes' folder;
- section marks (§, "Appendix A", "pitfall 8") on a line that names no markdown file of the repo;
- markdown links whose target is missing;
- mentions of repo paths (`docs/….md`, `ideogram_app/…`, `tests/…`, `benchmarks/…`) that do not exist;
- `docs/x.md, "Section"` references whose section heading is not in that file.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("ideogram_app", "docs", "benchmarks", "tests", "README.md", "app.py")
TEXT_SUFFIXES = {".py", ".md", ".json", ".js", ".css", ".html", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".ini"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis"}

NOTES = r"ideogram4-model|ideogram4-training|performance|product|architecture"
NOTE_FILE = re.compile(rf"((?:[\w.-]+/)*)(?<![\w-])({NOTES})\.md\b")
FORBIDDEN = [
    (re.compile(r"\bspec\s*\(?\s*(§|appendix\b|pitfall\b)", re.IGNORECASE), "cites the spec"),
    (re.compile(r"\b(the|a) spec\b|\bspec's\b", re.IGNORECASE), "cites the spec"),
    (re.compile(r"shared/docs\b|/work/shared\b"), "points into the notes folder outside the repo"),
]
SECTION_MARK = re.compile(r"§|\bAppendix [A-Z]\b|\bpitfall \d", re.IGNORECASE)
MARKDOWN_FILE = re.compile(r"(?<![\w-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:ideogram_app|tests|benchmarks|docs)/[\w./-]*[\w-])")
SECTION_REF = re.compile(r"(?<![\w./-])(docs/[\w.-]+\.md)[,:]?\s*(?:section\s*)?\(?\s*([\"'])([^\"'\n]{1,80}?)\2")
FENCE = re.compile(r"^\s*(```|~~~)")


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if (file.is_file() and file.suffix in TEXT_SUFFIXES and file.resolve() != Path(__file__).resolve()
                    and not SKIPPED_DIRS.intersection(file.relative_to(ROOT).parts)):
                files.append(file)
    return files


def exists_in_repo(reference: str, source: Path) -> bool:
    """A path as written, relative to the repository root or to the citing file's folder."""
    reference = reference.split("#", 1)[0].rstrip(".,:;")
    return bool(reference) and any((base / reference).exists() for base in (ROOT, source.parent))


def headings(markdown: Path) -> list[str]:
    found, in_code = [], False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.append(normalise(line.lstrip("#")))
    return found


def normalise(text: str) -> str:
    return " ".join(text.replace("`", "").lower().split())


def has_section(markdown: Path, name: str) -> bool:
    name = normalise(name)
    return any(h == name or (h.startswith(name) and not h[len(name)].isalnum()) for h in headings(markdown))


def line_problems(file: Path, number: int, line: str) -> list[str]:
    where = f"{file.relative_to(ROOT)}:{number}"
    problems = [f"{where}: {why}: {line.strip()}" for pattern, why in FORBIDDEN if pattern.search(line)]
    for match in NOTE_FILE.finditer(line):
        if not exists_in_repo(match.group(0), file):
            problems.append(f"{where}: cites {match.group(0)}, which is not in the repository: {line.strip()}")
    if SECTION_MARK.search(line) and not any(exists_in_repo(m, file) for m in MARKDOWN_FILE.findall(line)):
        problems.append(f"{where}: a section mark without a document of the repo on the line: {line.strip()}")
    if file.suffix == ".md":
        for target in LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:|#", target) and not exists_in_repo(target, file):
                problems.append(f"{where}: link to a missing file {target}")
    for reference in REPO_PATH.findall(line):
        if not any(c in reference for c in "*<{") and not exists_in_repo(reference, file):
            problems.append(f"{where}: mentions {reference}, which does not exist")
    return problems


def section_problems(file: Path, text: str) -> list[str]:
    """`docs/x.md, "Section"` with the heading in x.md; comment markers and line breaks inside a reference
    are folded first, because a citation often wraps."""
    folded = re.sub(r"\s*\n\s*(?:#+|//|\*)?\s*", " ", text)
    problems = []
    for doc, _quote, section in SECTION_REF.findall(folded):
        target = ROOT / doc
        if target.is_file() and not has_section(target, section):
            problems.append(f"{file.relative_to(ROOT)}: cites section {section!r} of {doc}, which has no such heading")
    return problems


def test_every_reference_resolves_inside_the_repository():
    problems = []
    for file in scanned_files():
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            problems += line_problems(file, number, line)
        problems += section_problems(file, text)
    assert not problems, f"{len(problems)} unresolved reference(s):\n" + "\n".join(problems)


def test_the_checker_catches_each_kind_of_dangling_reference(tmp_path):
    """The rules themselves, on made-up lines (the files under test are real repo files)."""
    source = ROOT / "docs" / "pipeline.md"
    bad = [
        "Flow (spec §7.5): validate everything",
        "the latent constants against the spec;",
        "Runtime weight bytes (performance.md §2.4)",
        "rules (ideogram4-model.md §8.1) as constants",
        "see product.md and ideogram4-training.md",
        "# Typed in from /work/shared/docs/x",
        "normalised with fixed constants (pitfall 8).",
        "see [the notes](missing-notes.md)",
        "see docs/nowhere.md",
        "loaded by ideogram_app/model/no_such_file.py",
    ]
    for line in bad:
        assert line_problems(source, 1, line), line
    good = [
        'The sampler (docs/pipeline.md, "Sampler").',
        "see [the DiT](model-dit.md) and ideogram_app/caption/templates.py",
        "constants (docs/model-vae-text.md §Latents)",
        "https://example.org/performance-notes",
        "tests/fixtures/*.py and ideogram_app/<name>.py are patterns",
    ]
    for line in good:
        assert line_problems(source, 1, line) == [], line
    assert section_problems(source, 'see (docs/pipeline.md,\n    # "Sampler") and docs/model-dit.md, "MRoPE"') == []
    assert section_problems(source, 'see docs/pipeline.md, "No such section"')
