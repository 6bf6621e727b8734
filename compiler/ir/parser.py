"""Parser of the text IR written by `qcc.ir.printer` (`parse(print_graph(g))` rebuilds `g`)."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from qcc.errors import IRParseError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops import infer_types
from qcc.ir.types import QuantParams, TensorType, numpy_dtype

_NAME = r'%(?:[A-Za-z0-9_]+|"(?:[^"\\]|\\.)*")'
_FUNC = re.compile(r"^func @(\w+)\((.*)\) -> \((.*)\) \{$")
# A param's type may carry {quant} parameters, which contain spaces: match the braces explicitly.
_PARAM = re.compile(rf'^({_NAME}) = param ("(?:[^"\\]|\\.)*") : ([^\s{{]+(?:\{{[^}}]*\}})?)(?: dense<(.*)>)?$')
# Operands are matched quote-aware: a quoted value name may contain parentheses.
_NODE = re.compile(rf"^((?:{_NAME})(?:, {_NAME})*) = (\w+)"
                   r'\(((?:[^()"]|"(?:[^"\\]|\\.)*")*)\)'
                   r"(?: (\{.*\}))? : (.*?)(?:  // (.*))?$")
_TYPE = re.compile(r"^(\w+)\[([0-9,]*)\](\{.*\})?$")


_SPECIAL_FLOATS = {"inf": math.inf, "nan": math.nan}


def _literal(text: str) -> Any:
    """A printed attribute or array literal: numbers, strings, bools, None, inf, nan, tuples and lists."""
    try:
        return _literal_node(ast.parse(text.strip(), mode="eval").body)
    except (ValueError, SyntaxError, TypeError) as e:
        raise IRParseError(f"bad literal {text.strip()!r}") from e


def _literal_node(node: ast.expr) -> Any:
    # Like ast.literal_eval, plus the bare names inf and nan the printer writes for special floats.
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal_node(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal_node(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[node.id]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, False, []
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                cur.append(text[i:i + 2])
                i += 2
                continue
            quote = c != '"'
        elif c == '"':
            quote = True
        elif c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts]


def _attrs(text: str) -> dict[str, Any]:
    out = {}
    for item in split_top(text[1:-1]):
        key, _, val = item.partition("=")
        out[key.strip()] = _literal(val)
    return out


def parse_type(text: str) -> TensorType:
    m = _TYPE.match(text.strip())
    if not m:
        raise IRParseError(f"bad type {text!r}")
    shape = tuple(int(d) for d in m.group(2).split(",") if d)
    quant = None
    if m.group(3):
        a = _attrs(m.group(3))
        quant = QuantParams(tuple(a["scale"]), tuple(a["zp"]), a["bits"], a.get("signed", True),
                            a.get("axis"), a.get("group_size"))
    return TensorType(shape, m.group(1), quant)


def _unquote(ref: str) -> str:
    ref = ref.strip().removeprefix("%")
    return str(ast.literal_eval(ref)) if ref.startswith('"') else ref


def parse(text: str, params: Mapping[str, np.ndarray] | None = None, *, allow_missing_params: bool = False) -> Graph:
    """Parse the text IR. Param data comes from inline `dense<...>` or from `params` (by param name);
    missing data is an error unless `allow_missing_params` (then zeros)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith("//")]
    if not lines:
        raise IRParseError("empty IR text")
    m = _FUNC.match(lines[0])
    if not m or lines[-1] != "}":
        raise IRParseError(f"line 1: expected 'func @name(...) -> (...) {{', got {lines[0]!r}")
    g = Graph(name=m.group(1))
    env: dict[str, Value] = {}
    for arg in split_top(m.group(2)):
        ref, _, ty = arg.partition(": ")
        v = Value(parse_type(ty), _unquote(ref))
        env[ref.strip()] = v
        g.inputs.append(v)
    for lineno, line in enumerate(lines[1:-1], start=2):
        try:
            if line.startswith("return"):
                g.outputs = [env[r] for r in split_top(line[len("return"):])]
                continue
            if pm := _PARAM.match(line):
                _parse_param(pm, g, env, params, allow_missing_params)
                continue
            nm = _NODE.match(line)
            if not nm:
                raise IRParseError(f"cannot parse {line!r}")
            outs_ref, op, args, attr_text, types_text, node_name = nm.groups()
            inputs = tuple(env[r] for r in split_top(args))
            attrs = _attrs(attr_text) if attr_text else {}
            types = [parse_type(t) for t in split_top(types_text)]
            inferred = infer_types(op, [v.type for v in inputs], attrs, node_name or "")
            if [(t.shape, t.dtype) for t in inferred] != [(t.shape, t.dtype) for t in types]:
                raise IRParseError(f"declared types {types_text} differ from inferred "
                                   f"{', '.join(str(t) for t in inferred)}")
            refs = split_top(outs_ref)
            outputs = tuple(Value(t, _unquote(r)) for r, t in zip(refs, types))
            env.update(zip(refs, outputs))
            g.nodes.append(Node(op, inputs, outputs, attrs, {}, node_name or ""))
        except IRParseError as e:
            raise IRParseError(f"line {lineno}: {e}") from None
        except KeyError as e:
            raise IRParseError(f"line {lineno}: undefined value {e.args[0]}") from None
        except Exception as e:
            raise IRParseError(f"line {lineno}: {e}") from e
    return g


def _parse_param(pm: re.Match[str], g: Graph, env: dict[str, Value], params: Mapping[str, np.ndarray] | None,
                 allow_missing: bool) -> None:
    ref, name_lit, ty_text, dense = pm.groups()
    name = str(ast.literal_eval(name_lit))
    ty = parse_type(ty_text)
    if dense is not None:
        data = np.array(_literal(dense), dtype=numpy_dtype(ty.dtype)).reshape(ty.shape)
    elif params is not None and name in params:
        data = np.asarray(params[name])
    elif allow_missing:
        data = np.zeros(ty.shape, numpy_dtype(ty.dtype))
    else:
        raise IRParseError(f"no data for param {name!r}")
    if data.shape != ty.shape or data.dtype != numpy_dtype(ty.dtype):
        raise IRParseError(f"param {name!r} data is {data.dtype}{list(data.shape)}, declared {ty}")
    v = Value(ty, name)
    env[ref] = v
    g.params[v] = data
