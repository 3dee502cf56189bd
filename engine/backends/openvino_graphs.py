"""Graph surgery for the openvino backend, on openvino.Model objects before compilation.

    pooled_head          a head graph cut at its pooled RoI features (the RoiAlign nodes dropped),
                         so the native RoIAlign (engine.roi_align) feeds it
    channels_last_head   that head taking its pooled input channels-last where it flattens it
                         into a fully connected layer (the fc layer's weight columns permuted)
    quantized_input_head that head taking its input already quantized to uint8 (INT8 directories)
    native_head          the three above, as the backend applies them
    seven_bit_weights    8-bit INT8 weights requantized to 7 bits, for CPUs that saturate
                         U8 x S8 products (engine.int8_arithmetic)

Each rewrite returns None (or leaves the graph as it was) where the graph is not of the form
it expects, so the backend falls back to the general path.
"""

from __future__ import annotations

import numpy as np

from .. import int8_arithmetic
from ..errors import ModelDirError


def _pooled_parameter(shape, element_type):
    """A Parameter "pooled" (its tensor named so too) of `shape`, R (the first) dynamic: the
    input the native RoIAlign fills."""
    import openvino as ov

    parameter = ov.opset13.parameter(ov.PartialShape([-1, *shape[1:]]), element_type, name="pooled")
    parameter.output(0).get_tensor().set_names({"pooled"})
    return parameter


def _with_pooled_input(model, parameter):
    """`model` rebuilt with `parameter` (now wired in) as its "pooled" input, in place of the
    one it had."""
    import openvino as ov

    others = [p for p in model.get_parameters() if p.get_friendly_name() != "pooled"]
    return ov.Model(model.get_results(), [parameter] + others, model.get_friendly_name())


def pooled_head(model, pooled_shape):
    """The head graph `model` (an openvino.Model) cut at its pooled RoI features: the Concat
    of its per-level ROIAlign outputs (or the one ROIAlign) becomes a Parameter "pooled" of
    pooled_shape (R, C, PH, PW, R dynamic), and the RoiAlign nodes and their rois_<j> and
    feature inputs fall away. Other inputs (the mask head's class_ids) stay."""
    import openvino as ov

    aligns = [op for op in model.get_ordered_ops() if op.get_type_name() == "ROIAlign"]
    if not aligns:
        raise ModelDirError(f"{model.get_friendly_name()}: no ROIAlign node to cut the head graph at")
    consumers = {t.get_node().get_friendly_name(): t.get_node() for a in aligns for t in a.output(0).get_target_inputs()}
    if len(aligns) == 1:
        cut = aligns[0]
    elif len(consumers) == 1 and next(iter(consumers.values())).get_type_name() == "Concat":
        cut = next(iter(consumers.values()))
    else:
        raise ModelDirError(f"the head graph's ROIAlign outputs feed {sorted(consumers)}, not one Concat")
    pooled = _pooled_parameter(pooled_shape, ov.Type.f32)
    cut.output(0).replace(pooled.output(0))
    # the parameters the results still depend on (the dropped RoiAlign nodes still hold their
    # feature and rois_<j> inputs, so "has a consumer" would keep those)
    reached, stack = set(), [r for r in model.get_results()]
    while stack:
        node = stack.pop()
        if node.get_instance_id() in reached:
            continue
        reached.add(node.get_instance_id())
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    kept = [p for p in model.get_parameters() if p.get_instance_id() in reached]
    return ov.Model(model.get_results(), [pooled] + kept, model.get_friendly_name())


# What may lie between a head's flatten and its first fully connected layer (an INT8
# directory's quantize/dequantize of the activations, with scalar parameters), and in that
# layer's weights (their dequantization, per output channel).
_ACTIVATION_OPS = {"FakeQuantize", "Convert", "Subtract", "Multiply"}
_WEIGHT_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape"}


def channels_last_head(model):
    """The cut head `model` (pooled_head's) taking its pooled features channels-last,
    (R, PH, PW, C), where it flattens them straight into a fully connected layer (the box
    head's fc6): the flatten then orders them (ph, pw, c), and the layer's weight columns are
    permuted to match, so the native RoIAlign writes its bins without a transpose (a large
    share of its time) and no Transpose runs in the graph. None where the graph
    is not of that form (the mask head's convolutions take NCHW)."""
    import openvino as ov

    pooled = next(p for p in model.get_parameters() if p.get_friendly_name() == "pooled")
    c, ph, pw = (d.get_length() for d in list(pooled.get_partial_shape())[1:])
    k = c * ph * pw
    (flatten,) = [t.get_node() for t in pooled.output(0).get_target_inputs()] or [None]
    if flatten is None or flatten.get_type_name() != "Reshape" or flatten.get_output_partial_shape(0).rank.get_length() != 2:
        return None
    node = flatten
    while True:  # forward to the fully connected layer
        consumers = [t for t in node.output(0).get_target_inputs()]
        if len(consumers) != 1:
            return None
        target, index = consumers[0].get_node(), consumers[0].get_index()
        if target.get_type_name() == "MatMul":
            if index != 0 or target.get_attributes()["transpose_a"]:
                return None
            matmul = target
            break
        others = [i for j, i in enumerate(target.inputs()) if j != index]
        if target.get_type_name() not in _ACTIVATION_OPS or any(
                not i.get_partial_shape().is_static or int(np.prod(list(i.get_shape()))) != 1 for i in others):
            return None
        node = target
    axis = 1 if matmul.get_attributes()["transpose_b"] else 0  # the input-feature axis of the weights
    constants, stack, seen = [], [matmul.input(1).get_source_output().get_node()], set()
    while stack:  # back through the weights' dequantization to the constants holding columns
        weight = stack.pop()
        if weight.get_instance_id() in seen:
            continue
        seen.add(weight.get_instance_id())
        if weight.get_type_name() not in _WEIGHT_OPS:
            return None
        shape = list(weight.get_output_partial_shape(0).to_shape()) if weight.get_output_partial_shape(0).is_static else None
        if shape is None:
            return None
        if weight.get_type_name() == "Constant":
            if len(shape) == 2 and shape[axis] == k and shape[1 - axis] != k:
                constants.append(weight)
            elif k in shape:
                return None
        elif weight.get_type_name() == "Reshape" and k in shape:
            return None
        stack.extend(i.get_source_output().get_node() for i in weight.inputs())
    if not constants:
        return None
    # new column b * C + ch (bin b, channel ch) is old column ch * PH * PW + b
    order = np.arange(k).reshape(c, ph * pw).T.reshape(-1)
    for constant in constants:
        permuted = ov.opset13.constant(np.take(constant.get_data(), order, axis=axis))
        permuted.set_friendly_name(constant.get_friendly_name())
        constant.output(0).replace(permuted.output(0))
    channels_last = _pooled_parameter((None, ph, pw, c), ov.Type.f32)
    flatten.input(0).replace_source_output(channels_last.output(0))
    return _with_pooled_input(model, channels_last)


def quantized_input_head(model):
    """The channels-last head `model` (channels_last_head's) taking its pooled features as
    uint8 where an INT8 directory quantizes them first thing (flatten -> FakeQuantize to 256
    levels -> Convert to u8): the native RoIAlign quantizes as it writes (a quarter of the
    bytes), and the graph's FakeQuantize over 12.5 M values (for 1000 RoIs) goes.
    Returns (model, (low, high)), the FakeQuantize's input range, or None where the graph
    is not of that form."""
    import openvino as ov

    pooled = next(p for p in model.get_parameters() if p.get_friendly_name() == "pooled")
    (flatten,) = [t.get_node() for t in pooled.output(0).get_target_inputs()]
    (fq,) = [t.get_node() for t in flatten.output(0).get_target_inputs()] or [None]
    if fq is None or fq.get_type_name() != "FakeQuantize" or fq.get_attributes()["levels"] != 256:
        return None
    bounds = [fq.input(i).get_source_output().get_node() for i in range(1, 5)]
    if any(b.get_type_name() != "Constant" or b.get_data().size != 1 for b in bounds):
        return None
    low, high, out_low, out_high = (float(b.get_data().reshape(-1)[0]) for b in bounds)
    consumers = [t.get_node() for t in fq.output(0).get_target_inputs()]
    if (out_low, out_high) != (0.0, 255.0) or not high > low or len(consumers) != 1 or (
            consumers[0].get_type_name() != "Convert" or consumers[0].get_output_element_type(0) != ov.Type.u8):
        return None
    quantized = _pooled_parameter(list(pooled.get_partial_shape()), ov.Type.u8)
    reshape = ov.opset13.reshape(quantized, flatten.input(1).get_source_output(), flatten.get_attributes()["special_zero"])
    consumers[0].output(0).replace(reshape.output(0))
    return _with_pooled_input(model, quantized), (low, high)


def _single_consumer(node):
    """(node, input index) of `node`'s only consumer, or (None, None)."""
    targets = list(node.output(0).get_target_inputs())
    return (targets[0].get_node(), targets[0].get_index()) if len(targets) == 1 else (None, None)


def _constant_behind(node):
    """The Constant that `node` (a Constant, or a Reshape/Convert chain from one, each used
    only on this path) is, or None."""
    while node.get_type_name() in ("Reshape", "Convert", "Unsqueeze"):
        if _single_consumer(node)[0] is None:
            return None
        node = node.input(0).get_source_output().get_node()
    return node if node.get_type_name() == "Constant" and _single_consumer(node)[0] is not None else None


def seven_bit_weights(model) -> tuple[int, int]:
    """Requantize `model`'s 8-bit INT8 weights to 7 bits in place, for a CPU whose INT8 kernels
    saturate U8 x S8 pair sums (engine.int8_arithmetic): each S8 weight tensor with values
    beyond +-64 (Constant -> Convert -> [Subtract zero point] -> Multiply scale, the form
    OpenVINO reads an ONNX DequantizeLinear in) becomes round(w / 2) with its scale doubled.
    That adds at most half a weight step of rounding, where saturation was unbounded.
    Returns (requantized, left): tensors rewritten, and 8-bit ones of another form (a
    non-zero zero point, shared scales) left as they were."""
    import openvino as ov

    limit = int8_arithmetic.SEVEN_BIT_LIMIT
    requantized = left = 0
    for constant in [op for op in model.get_ordered_ops()
                     if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8]:
        weights = constant.get_data()
        if weights.size == 0 or int(np.abs(weights.astype(np.int16)).max()) <= limit:
            continue
        convert, _ = _single_consumer(constant)
        if convert is None or convert.get_type_name() != "Convert":
            continue  # not a weight's dequantization (a zero point is Convert -> Reshape, and small)
        node, index = _single_consumer(convert)
        if node is not None and node.get_type_name() == "Subtract" and index == 0:
            zero_point = _constant_behind(node.input(1).get_source_output().get_node())
            if zero_point is None or np.any(zero_point.get_data()):
                left += 1
                continue
            node, index = _single_consumer(node)
        scale = _constant_behind(node.input(1 - index).get_source_output().get_node()) if (
            node is not None and node.get_type_name() == "Multiply") else None
        if scale is None or scale.get_output_element_type(0) != ov.Type.f32:
            left += 1
            continue
        halved = np.clip(np.round(weights.astype(np.float32) / 2), -limit, limit).astype(np.int8)
        for old, data in ((constant, halved), (scale, scale.get_data() * np.float32(2))):
            new = ov.opset13.constant(data)
            new.set_friendly_name(old.get_friendly_name())
            old.output(0).replace(new.output(0))
        requantized += 1
    return requantized, left


def native_head(model, channels: int, output_size):
    """The head graph `model` as the backend runs it with the native RoIAlign: cut at its
    pooled input (pooled_head), channels-last where it flattens that into a fully connected
    layer (channels_last_head), uint8 where that layer is INT8 (quantized_input_head).
    Returns (model, channels_last, quantize: (low, high) or None)."""
    head = pooled_head(model, (None, channels, *output_size))
    channels_last = channels_last_head(head)
    if channels_last is None:
        return head, False, None
    quantized = quantized_input_head(channels_last)
    if quantized is None:
        return channels_last, True, None
    return quantized[0], True, quantized[1]
