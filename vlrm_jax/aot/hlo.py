"""What a compiled program does per run, read from its optimised HLO text (`compiled.as_text()`).

XLA's own `cost_analysis()` counts a while loop's body once, and this step is loops inside loops
(micro-batches, then layers under `lax.scan`, then decode steps), so its FLOPs come out an order of
magnitude low. Here every computation gets a multiplicity: the entry runs once, a while body as
often as its loop runs, a called or fused computation as often as its caller. Then:

- FLOPs: 2 x multiply-adds of every `dot` and `convolution` (TPU programs express matmuls as
  convolutions), times the multiplicity of the computation that holds it;
- collectives: all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute (an async
  pair counted once, at its start), by kind, with the bytes of their results;
- HBM bytes: what each op outside a fusion reads and writes (a fusion reads its operands and writes
  its result once; an operand read only through slices, as a scanned layer reads its weights out
  of the stacked array, counts the slices; an async slice or copy between HBM and on-chip memory
  counts the moved array once; values laid out in on-chip memory, `S(1)`, are left out). An
  estimate, within about 2x of a hand count on the programs checked.

Trip counts: a compiled scan's condition compares its counter with a constant; the largest integer
constant of the condition is taken as the trip count, which for a loop that can stop early (the
decode loop stops when every caption has ended) is its limit: figures are per step at the longest
captions.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "copy-done", "send-done",
               "recv-done", "add-dependency"}
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = ")
_CALLS = re.compile(r"\b(body|condition|calls|branch_computations|called_computations)=(\{[^}]*\}|%[\w.\-]+)")


@dataclasses.dataclass
class Instr:
    name: str
    shape: str  # the result shape text (a tuple in parentheses, or one array)
    opcode: str
    operands: list[str]
    args: str  # the text inside the parentheses (a constant's value)
    attrs: str


@dataclasses.dataclass
class Program:
    computations: dict[str, list[Instr]]
    entry: str
    shapes: dict[str, str]  # instruction name -> result shape text
    instrs: dict[str, Instr]  # instruction name -> instruction (names are unique in a module)
    roots: dict[str, str]  # computation -> its ROOT instruction's name


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis group that opens at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _instruction(line: str) -> Instr | None:
    match = _INSTR.match(line)
    if not match:
        return None
    rest = line[match.end():]
    if rest.startswith("("):
        end = _balanced(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren]
    end = _balanced(rest, paren)
    args = rest[paren + 1:end - 1]
    return Instr(match.group(1), shape, opcode, re.findall(r"%([\w.\-]+)", args), args, rest[end:])


def parse(text: str) -> Program:
    computations: dict[str, list[Instr]] = {}
    shapes: dict[str, str] = {}
    instrs: dict[str, Instr] = {}
    roots: dict[str, str] = {}
    entry, current = "", None
    for line in text.splitlines():
        if not line.startswith(" ") and not line.startswith("}"):
            header = _HEADER.match(line)
            if header and line.rstrip().endswith("{"):
                current = header.group(1)
                computations[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if current is None:
            continue
        instr = _instruction(line)
        if instr is not None:
            computations[current].append(instr)
            shapes[instr.name] = instr.shape
            instrs[instr.name] = instr
            if line.lstrip().startswith("ROOT "):
                roots[current] = instr.name
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return Program(computations, entry, shapes, instrs, roots)


def arrays(shape: str, on_chip: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a shape text; on_chip=False leaves out those laid out in
    on-chip memory (layout with S(1))."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        if not on_chip and layout and "S(1)" in layout:
            continue
        out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


def nbytes(shape: str, on_chip: bool = True) -> float:
    return sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims in arrays(shape, on_chip))


def _int_constant(instr: Instr | None) -> int | None:
    if instr is not None and instr.opcode == "constant" and re.match(r"^[su](32|64)\[\]", instr.shape) \
            and re.fullmatch(r"-?\d+", instr.args):
        return int(instr.args)
    return None


def _through_copies(program: Program, name: str) -> Instr | None:
    instr = program.instrs.get(name)
    while instr is not None and instr.opcode in ("copy", "bitcast") and instr.operands:
        instr = program.instrs.get(instr.operands[0])
    return instr


def _loop_counter(program: Program, loop: Instr) -> tuple[int, int] | None:
    """(tuple index of the counter, its limit) of a loop whose condition is `counter < N` (the
    smallest N when several such compares are joined)."""
    cond = next((c for k, c in _called(loop) if k == "condition"), None)
    found = []
    for instr in program.computations.get(cond, []):
        if instr.opcode != "compare" or "direction=LT" not in instr.attrs or len(instr.operands) != 2:
            continue
        counter, limit = (program.instrs.get(o) for o in instr.operands)
        bound = _int_constant(limit)
        if bound is not None and counter is not None and counter.opcode == "get-tuple-element":
            found.append((int(re.search(r"index=(\d+)", counter.attrs).group(1)), bound))
    if not found:
        return None
    index = found[0][0]
    return index, min(b for i, b in found if i == index)


def _loop_start(program: Program, loop: Instr, index: int, depth: int = 0) -> int:
    """The counter's initial value: a constant, or where an earlier loop's counter stopped (a
    decode split into phases continues the count); 0 when neither."""
    init = program.instrs.get(loop.operands[0]) if loop.operands else None
    if init is None or init.opcode != "tuple" or index >= len(init.operands):
        return 0
    source = _through_copies(program, init.operands[index])
    value = _int_constant(source)
    if value is not None:
        return value
    if source is not None and source.opcode == "get-tuple-element" and depth < 16:
        earlier = program.instrs.get(source.operands[0]) if source.operands else None
        if earlier is not None and earlier.opcode == "while":
            counter = _loop_counter(program, earlier)
            if counter is not None and counter[0] == int(re.search(r"index=(\d+)", source.attrs).group(1)):
                return max(counter[1], _loop_start(program, earlier, counter[0], depth + 1))
    return 0


def trip_count(program: Program, loop: Instr) -> int:
    """How often a while loop runs: its condition's `counter < N` less the counter's start;
    without such a compare, the largest integer constant of the condition (see the module doc);
    1 if none."""
    counter = _loop_counter(program, loop)
    if counter is not None:
        index, bound = counter
        return max(bound - _loop_start(program, loop, index), 1)
    cond = next((c for k, c in _called(loop) if k == "condition"), None)
    values = [v for v in map(_int_constant, program.computations.get(cond, [])) if v is not None]
    return max(values, default=1)


def _called(instr: Instr) -> list[tuple[str, str]]:
    """(kind, computation) pairs an instruction calls (to_apply reductions are left out)."""
    out = []
    for kind, target in _CALLS.findall(instr.attrs):
        for name in re.findall(r"%([\w.\-]+)", target):
            out.append((kind, name))
    return out


def multiplicities(program: Program) -> dict[str, int]:
    """How many times each computation runs per execution of the entry."""
    counts: dict[str, int] = collections.defaultdict(int)

    def visit(name: str, times: int) -> None:
        counts[name] += times
        for instr in program.computations.get(name, []):
            calls = _called(instr)
            if instr.opcode == "while":
                trips = trip_count(program, instr)
                for _, callee in calls:
                    visit(callee, times * trips)
            else:
                for _, callee in calls:
                    visit(callee, times)

    visit(program.entry, 1)
    return dict(counts)


def _dims(program: Program, name: str) -> tuple[int, ...]:
    found = arrays(program.shapes.get(name, ""))
    return found[0][1] if found else ()


def _label_attr(attrs: str, key: str) -> str:
    match = re.search(rf"\b{key}=([^,\s]+)", attrs)
    return match.group(1) if match else ""


def instr_flops(program: Program, instr: Instr) -> float:
    """2 x multiply-adds of a dot or convolution (0 for other ops)."""
    out = arrays(instr.shape)
    if not out or instr.opcode not in ("dot", "convolution") or len(instr.operands) < 2:
        return 0.0
    out_elems = math.prod(out[0][1])
    if instr.opcode == "dot":
        lhs = _dims(program, instr.operands[0])
        contracting = [int(d) for d in re.findall(r"\d+", _label_attr(instr.attrs, "lhs_contracting_dims"))]
        return 2.0 * out_elems * math.prod(lhs[d] for d in contracting if d < len(lhs))
    lhs, kernel = _dims(program, instr.operands[0]), _dims(program, instr.operands[1])
    labels = _label_attr(instr.attrs, "dim_labels")  # e.g. 0bf_io0->0bf: input_kernel->output
    match = re.fullmatch(r"(\w+)_(\w+)->(\w+)", labels)
    if not match or len(match.group(1)) != len(lhs) or len(match.group(2)) != len(kernel):
        return 0.0
    lhs_labels, kernel_labels = match.group(1), match.group(2)
    # multiply-adds per output element: the kernel's input features times the taps of each spatial
    # dimension that meet the input (a matmul written as a convolution may slide a kernel of size
    # n over an input of size 1: one tap per output, not n; a batched matmul may dilate the input
    # by the window size, which leaves one tap per output as well)
    window = re.search(r"window=\{([^}]*)\}", instr.attrs)
    dilation = re.search(r"lhs_dilate=([\dx]+)", window.group(1)) if window else None
    dilation = [int(d) for d in dilation.group(1).split("x")] if dilation else []
    per_output = kernel[kernel_labels.index("i")]
    for i, label in enumerate(kernel_labels):
        if label.isdigit():
            d = dilation[int(label)] if int(label) < len(dilation) else 1
            taps = -(-kernel[i] // d)
            size = lhs[lhs_labels.index(label)] if label in lhs_labels else taps
            per_output *= min(taps, size)
    return 2.0 * out_elems * per_output


@dataclasses.dataclass
class Counts:
    flops: float  # per execution of the program, loops counted through
    hbm_bytes: float
    collectives: dict[str, dict[str, float]]  # kind -> {"count", "bytes"}
    loops: list[tuple[str, int, int]]  # (while op, trip count, how often the loop is entered)


def count(text: str) -> Counts:
    """FLOPs, HBM bytes and collectives of one run of a compiled program (see the module doc)."""
    program = parse(text)
    times = multiplicities(program)
    fused = {callee for instrs in program.computations.values() for i in instrs if i.opcode == "fusion"
             for _, callee in _called(i)}
    flops = hbm = 0.0
    collectives: dict[str, dict[str, float]] = {}
    loops = []
    for name, instrs in program.computations.items():
        n = times.get(name, 0)
        if not n:
            continue
        for instr in instrs:
            flops += n * instr_flops(program, instr)
            kind = instr.opcode.removesuffix("-start")
            if kind in COLLECTIVES and not instr.opcode.endswith("-done"):
                entry = collectives.setdefault(kind, {"count": 0, "bytes": 0.0})
                entry["count"] += n
                entry["bytes"] += n * _result_bytes(instr)
            if instr.opcode == "while":
                loops.append((instr.name, trip_count(program, instr), n))
            if name not in fused and instr.opcode not in _NO_TRAFFIC:
                hbm += n * _traffic(program, instr)
    return Counts(flops, hbm, collectives, loops)


_SLICING = ("dynamic-slice", "slice", "gather")


def _traffic(program: Program, instr: Instr) -> float:
    """HBM bytes an op outside a fusion reads and writes. A slice of an operand reads the slice,
    not the operand (a scanned layer reads its own weights out of the stacked array), and an
    in-place update writes the update, not the buffer."""
    if instr.opcode in _SLICING:
        return 2 * nbytes(instr.shape, on_chip=False)
    if instr.opcode in ("slice-start", "copy-start"):
        # an async move between HBM and on-chip memory: the moved array once ((source), slice,
        # context) for a slice, (destination, source, context) for a copy
        found = arrays(instr.shape)
        pick = found[len(instr.operands)] if instr.opcode == "slice-start" and len(found) > len(instr.operands) \
            else found[0] if found else None
        return _DTYPE_BYTES[pick[0]] * math.prod(pick[1]) if pick else 0.0
    if instr.opcode in ("slice-done", "copy-done"):
        return 0.0
    if instr.opcode == "dynamic-update-slice" and len(instr.operands) > 1:
        return 2 * nbytes(program.shapes.get(instr.operands[1], ""), on_chip=False)
    if instr.opcode != "fusion":
        return nbytes(instr.shape, on_chip=False) + sum(
            nbytes(program.shapes.get(o, ""), on_chip=False) for o in instr.operands)
    body = next((c for _, c in _called(instr)), None)
    total = 0.0
    for index, operand in enumerate(instr.operands):
        full = nbytes(program.shapes.get(operand, ""), on_chip=False)
        sliced = _sliced_read(program, body, index)
        total += full if sliced is None else min(full, sliced)
    root_instr = program.instrs.get(program.roots.get(body, "")) if body else None
    if root_instr is not None and root_instr.opcode == "dynamic-update-slice" and len(root_instr.operands) > 1:
        total += nbytes(program.shapes.get(root_instr.operands[1], ""))
    else:
        total += nbytes(instr.shape, on_chip=False)
    return total


def _sliced_read(program: Program, body: str | None, index: int, depth: int = 0) -> float | None:
    """Bytes a fused computation reads of its parameter `index` when it reads it only through
    slices (in nested fusions too) or as the buffer an in-place update writes into; None when
    it reads the whole value."""
    params, users = _fused_params(program, body)
    name = params.get(index)
    uses = users.get(name, [])
    if not uses or depth > 8:
        return None
    total = 0.0
    for use in uses:
        if use.opcode in _SLICING:
            total += nbytes(use.shape)
        elif use.opcode == "dynamic-update-slice" and use.operands[0] == name:
            continue
        elif use.opcode == "fusion":
            nested = next((c for _, c in _called(use)), None)
            part = sum(_sliced_read(program, nested, i, depth + 1) or float("nan")
                       for i, o in enumerate(use.operands) if o == name)
            if part != part:  # a nested read of the whole value
                return None
            total += part
        else:
            return None
    return total


def _fused_params(program: Program, body: str | None) -> tuple[dict[int, str], dict[str, list[Instr]]]:
    """A fused computation's parameters by index, and the instructions that read each value."""
    params, users = {}, collections.defaultdict(list)
    for instr in program.computations.get(body, []) if body else []:
        if instr.opcode == "parameter" and re.fullmatch(r"\d+", instr.args):
            params[int(instr.args)] = instr.name
        for operand in instr.operands:
            users[operand].append(instr)
    return params, users


def _result_bytes(instr: Instr) -> float:
    """Bytes a collective produces (an async start's tuple holds its operands first: the last
    array is the result)."""
    found = arrays(instr.shape)
    if instr.opcode.endswith("-start") and len(found) > 1:
        dtype, dims = found[-1]
        return _DTYPE_BYTES[dtype] * math.prod(dims)
    return nbytes(instr.shape)
