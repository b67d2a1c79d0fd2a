"""The firmware loads code on demand one way (firmware/loader.py), and a reader or a tool can follow
every such call: it names its module and function as literals, the module is in the loader's one
table (or resident), the function is there, and no resident module imports on-demand code. The
one exception is a family of modules an image ships any number of, found in the image rather than
listed (a HAN technology's driver, han_driver_<tech>: firmware/han_table.py): its load names the
family's prefix as a literal, and the family is on-demand code."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
# Loads on its own, before the loader: the meter state reads its schema (state_schema) once at
# import and drops it there.
_OWN_LOADING = {"meter_state.py"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _table() -> dict[str, tuple[str, ...]]:
    out = {}
    for node in _tree(FIRMWARE / "loader.py").body:
        if isinstance(node, ast.Assign) and node.targets[0].id in ("TASKS", "KEPT", "API"):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


FOUND = ("han_driver_",)  # the families, by prefix


def _on_demand(table) -> set[str]:
    """TASKS, KEPT, and the modules in firmware/ of each FOUND family."""
    found = {p.stem for p in FIRMWARE.glob("*.py") if p.stem.startswith(FOUND)}
    return set(table["TASKS"]) | set(table["KEPT"]) | found


def _path(module: str) -> Path:
    if module.startswith("bootloader."):
        return ROOT / "bootloader" / (module.split(".", 1)[1] + ".py")
    return FIRMWARE / (module + ".py")


def _defines(module: str, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in _tree(_path(module)).body)


def _loader_calls():
    """(file, kind, module, function or None, node) for every loader.call/run/room in firmware/,
    and every command served by the loader (commands.table's (serve, (module, function)) rows)."""
    for path in sorted(FIRMWARE.glob("*.py")):
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "loader"
                    and node.func.attr in ("call", "run", "room")):
                if ast.unparse(node.args[0]) == "where[0]":
                    continue  # MeterApp.serve: the rows below name what it serves
                args = [a.value if isinstance(a, ast.Constant) else None for a in node.args[:2]]
                first = node.args[0]
                if isinstance(first, ast.BinOp) and isinstance(first.left, ast.Constant):
                    args[0] = first.left.value + "*"  # a family's prefix and a member's name
                yield path.name, node.func.attr, args[0], args[1] if node.func.attr != "room" else "", node
            if (isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Name)
                    and node.elts[0].id == "serve"):
                where = ast.literal_eval(node.elts[1])
                yield path.name, "serve", where[0], where[1], node


def test_the_loader_table_names_modules_that_exist():
    table = _table()
    assert set(table) == {"TASKS", "KEPT", "API"}
    names = [n for part in table.values() for n in part]
    assert len(names) == len(set(names))
    assert [n for n in names if not _path(n).is_file()] == []
    # Each family has members here, and none is also listed by hand.
    for prefix in FOUND:
        assert list(FIRMWARE.glob(prefix + "*.py")), prefix
        assert not [n for n in names if n.startswith(prefix)]


def test_every_load_on_demand_names_a_module_in_the_table_and_a_function_it_has():
    table = _table()
    on_demand = _on_demand(table)
    resident = {p.stem for p in FIRMWARE.glob("*.py")} - on_demand
    calls = list(_loader_calls())
    assert len(calls) > 20
    bad = []
    for file, kind, module, fn, node in calls:
        where = f"{file}:{node.lineno} {kind}({module!r}, {fn!r})"
        if not isinstance(module, str) or not isinstance(fn, str):
            bad.append(where + ": not literal")
        elif kind == "room" and module.endswith("*"):
            if module[:-1] not in FOUND:
                bad.append(where + ": not a family in FOUND")
        elif kind == "room":
            if module not in on_demand | set(table["API"]):
                bad.append(where + ": not in the table")
        elif module not in on_demand | resident:
            bad.append(where + ": not a firmware module")
        elif not _defines(module, fn):
            bad.append(where + ": no such function")
    assert bad == []


def test_code_is_loaded_and_dropped_by_the_loader_alone():
    table = _table()
    on_demand = _on_demand(table)
    bad = []
    for path in sorted(FIRMWARE.glob("*.py")):
        if path.name == "loader.py" or path.name in _OWN_LOADING:
            continue
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in ("__import__", "forget"):
                bad.append(f"{path.name}:{node.lineno} {node.id}")
            if isinstance(node, ast.Attribute) and node.attr == "modules" and getattr(node.value, "id", "") == "sys":
                if not (path.name == "cmd_status.py"):  # status counts them, it drops none
                    bad.append(f"{path.name}:{node.lineno} sys.modules")
        if path.stem not in on_demand:
            # A resident module that imports on-demand code would hold it, or load it again
            # behind the loader's back: it reaches it through loader.call/run.
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in on_demand]
    assert bad == []
