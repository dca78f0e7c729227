"""No class in services/ over 200 lines: a class that grows past it holds more than one idea
and is split by responsibility."""

import ast

from helpers import REPO

LIMIT = 200


def class_lengths() -> dict[str, int]:
    """Every class in services/, by file and name, with its length in lines (decorators too)."""
    lengths = {}
    for path in sorted((REPO / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                lengths[f"{path.relative_to(REPO)}:{node.name}"] = node.end_lineno - first + 1
    return lengths


def test_no_class_is_over_200_lines():
    over = {name: n for name, n in class_lengths().items() if n > LIMIT}
    assert not over, over


def test_the_measure_sees_the_classes():
    """It measures something: the processor's classes are found, with their real length."""
    lengths = class_lengths()
    assert "services/energy_worker/programs/processor/__init__.py:Processor" in lengths
    assert all(n > 1 for n in lengths.values())
