"""YAML reading shared by every parameter file: duplicate keys are errors, not "last wins".

PyYAML keeps the last of two equal keys in a mapping without a word, so a parameter given twice
silently takes its second value. :class:`UniqueKeyLoader` refuses such a file with
:class:`DuplicateKeyError`, which names the key and both lines.
"""

from __future__ import annotations

import yaml
from yaml.constructor import ConstructorError

__all__ = ["UniqueKeyLoader", "DuplicateKeyError", "yaml_problem"]


class DuplicateKeyError(ConstructorError):
    """A mapping of a YAML document has the same key twice."""

    def __str__(self) -> str:
        return self.problem


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(
                        None, None,
                        f"duplicate key {key!r} at line {line} (first at line {first})",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what is wrong with a YAML text and where."""
    if isinstance(exc, DuplicateKeyError):
        return str(exc)
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())
