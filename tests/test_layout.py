"""The shape of the code base, as the style guide asks for it: every top-level .py file at most 450 lines, at
least 20 % comment share (whole-line comments plus docstring lines, over non-blank lines), and no import
cycle between the top-level modules, counting imports made inside functions (a lazy import hides a cycle,
it does not remove it). Static reads of the sources: nothing is imported or run."""

import ast
import io
import pathlib
import tokenize

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = sorted(ROOT.glob("*.py"))
MAX_LINES, MIN_SHARE = 450, 0.20


def comment_share(src: str) -> float:
    """(whole-line comments + docstring lines) / non-blank lines."""
    lines = src.splitlines()
    nonblank = {i for i, line in enumerate(lines, 1) if line.strip()}
    notes = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(src).readline)
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].strip().startswith("#")
    }
    for node in ast.walk(ast.parse(src)):  # docstrings: the first statement of a module, class or function
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        body = getattr(node, "body", None) if isinstance(node, kinds) else None
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                notes.update(range(body[0].lineno, body[0].end_lineno + 1))
    return len(notes & nonblank) / len(nonblank)


def imports(path: pathlib.Path, modules: set) -> set:
    """The top-level modules `path` imports anywhere in it (module level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return (out & modules) - {path.stem}


def test_comment_share_by_hand():
    src = '"""Doc\nstring."""\n\n# a comment\nx = 1  # trailing: not a comment line\ny = 2\n'
    assert comment_share(src) == 3 / 5  # 2 docstring lines + 1 comment line over 5 non-blank lines


def test_every_file_is_short_and_commented():
    assert len(FILES) > 10  # the glob found the project
    for f in FILES:
        src = f.read_text()
        assert len(src.splitlines()) <= MAX_LINES, f"{f.name}: {len(src.splitlines())} lines"
        assert comment_share(src) >= MIN_SHARE, f"{f.name}: {100 * comment_share(src):.1f} % comments"


def test_no_import_cycle():
    modules = {f.stem for f in FILES}
    graph = {f.stem: imports(f, modules) for f in FILES}
    assert "policy" not in graph["ldm"]  # the latent space knows nothing of the policy that uses it
    # Depth-first search with colours: a grey module met again is a cycle.
    colour = dict.fromkeys(graph, "white")

    def visit(m, path):
        colour[m] = "grey"
        for d in sorted(graph[m]):
            assert colour[d] != "grey", "import cycle: " + " → ".join([*path, d])
            if colour[d] == "white":
                visit(d, [*path, d])
        colour[m] = "black"

    for m in sorted(graph):
        if colour[m] == "white":
            visit(m, [m])
