"""Stable, diff-friendly JSON: objects one key per line, lists of scalars on one line,
lists of lists of scalars one inner list per line. Keys keep insertion order."""
import json


def _scalar(x):
    return not isinstance(x, (dict, list))


def _fmt(obj, level, ind):
    pad, pad1 = " " * (ind * level), " " * (ind * (level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {_fmt(v, level + 1, ind)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(_scalar(x) for x in obj):
            return json.dumps(obj, ensure_ascii=False)
        if all(isinstance(x, list) and all(_scalar(y) for y in x) for x in obj):
            return "[\n" + ",\n".join(pad1 + json.dumps(x, ensure_ascii=False) for x in obj) + "\n" + pad + "]"
        return "[\n" + ",\n".join(pad1 + _fmt(x, level + 1, ind) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def dumps(obj, indent=1):
    return _fmt(obj, 0, indent) + "\n"
