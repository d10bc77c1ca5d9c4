#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/), each seed a file named for what it is:
valid inputs for the fuzzer to mutate, and reproducers of every finding of the hardening pass (issue 13's rows).
Run from anywhere: python3 tests/fuzz/seeds.py. libFuzzer adds what it finds under build/fuzz/corpus, not here."""
import json
import os
import random
import struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data.encode("latin-1") if isinstance(data, str) else data)


def safetensors(header, data, pad=True):
    header = header.encode("latin-1") if isinstance(header, str) else header
    while pad and len(header) % 8:
        header += b" "
    return struct.pack("<Q", len(header)) + header + data


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def i64(value):
    return struct.pack("<q", value)


def bn_file(batches=7, channels=3):
    tensors = {"weight": f32(*[1.0] * channels), "bias": f32(*[0.0] * channels),
               "running_mean": f32(*[0.5] * channels), "running_var": f32(*[2.0] * channels),
               "num_batches_tracked": i64(batches)}
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, raw in tensors.items():
        shape = [] if name == "num_batches_tracked" else [channels]
        dtype = "I64" if name == "num_batches_tracked" else "F32"
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return safetensors(json.dumps(header), data)


def one(name, dtype, shape, raw_len, extra=""):
    return '{"%s": {"dtype": "%s", "shape": %s, "data_offsets": [0, %d]}%s}' % (name, dtype, shape, raw_len, extra)


# state_dict: valid files, then the findings (issue 13 rows 5, 6, 9).
write("state_dict", "valid_batch_norm", bn_file())
write("state_dict", "valid_float16_bfloat16",
      safetensors('{"weight": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}, '
                  '"bias": {"dtype": "BF16", "shape": [3], "data_offsets": [6, 12]}}',
                  struct.pack("<6H", 0x3c00, 0x3800, 0x7e00, 0x3f80, 0x0001, 0x7f80)))
write("state_dict", "valid_empty_header", safetensors("{}", b""))
write("state_dict", "row5_num_batches_tracked_max", bn_file(batches=2**63 - 1))
write("state_dict", "row5_num_batches_tracked_negative", bn_file(batches=-1))
write("state_dict", "row6_zero_elements",
      safetensors('{"weight": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}', b""))
write("state_dict", "row9_duplicate_field",
      safetensors('{"w": {"dtype": "I64", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', f32(1, 2)))
write("state_dict", "row9_duplicate_name",
      safetensors('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                  '"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', f32(1)))
write("state_dict", "row9_overlapping_offsets",
      safetensors('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                  '"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', f32(1, 2, 3)))
write("state_dict", "row9_gapped_offsets",
      safetensors('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                  '"b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}', f32(1, 2, 3)))
write("state_dict", "row9_lone_surrogate", safetensors(one("w\\ud800", "F32", "[1]", 4), f32(1)))
write("state_dict", "row9_invalid_utf8", safetensors(one("w\xff", "F32", "[1]", 4), f32(1)))
write("state_dict", "row9_control_character", safetensors(one("w\x01", "F32", "[1]", 4), f32(1)))
write("state_dict", "row9_leading_zeros",
      safetensors('{"w": {"dtype": "F32", "shape": [01], "data_offsets": [0, 4]}}', f32(1)))
write("state_dict", "row9_metadata_not_an_object", safetensors('{"__metadata__": [1, 2]}', b""))
write("state_dict", "deep_nesting", safetensors("[" * 5000 + "]" * 5000, b""))
write("state_dict", "shape_overflows",
      safetensors('{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 0]}}', b""))

# tuning: a table of the format (runtime/tuning.h) naming variants every x86-64 build has, and broken ones.
table = "\n".join([
    "fusednorm-tuning\t1", "machine\tseed", "cpu\tseed", "date\t2026-12-05T00:00:00Z", "halide\t21.0.0",
    "threads\t2", "class\tcache\t2097152", "class\tllc\t402653184", "class\tdram\t-",
    "kernel\tclass\tvariant\tms\tresult\tshapes",
    "batch_norm_forward_inference_nchw_affine\tcache\tbatch_norm_forward_inference_nchw_affine_sse41\t0.004\t"
    "fastest\tcache.n4_c64_16x16[4x64x16x16]",
    "batch_norm_forward_inference_nchw_affine\tllc\tbatch_norm_forward_inference_nchw_affine_avx2\t-\t"
    "refused cache.x: bounds\tcache.x[1x2x3x4]", ""])
write("tuning", "valid_table", table)
write("tuning", "unknown_variant", table.replace("_sse41\t", "_avx9000\t"))
write("tuning", "classes_out_of_order", table.replace("class\tcache\t2097152", "class\tcache\t999999999999"))
write("tuning", "no_header", table.split("\n", 1)[1])
write("tuning", "empty", "")

# call: the first byte picks the call (0 batch_norm_forward, 1 group_norm_forward, 2 layer_norm_forward), and
# every later choice's first option is a valid one, so that a byte and zeros are a call that runs ([2, 2, 2, 2]);
# random choices, mostly zero; and the findings of rows 1 and 3 (a shape whose element count wraps int64: the
# second byte 15 picks a wrapping shape, the third which one) and 11 (training on one value per channel, [1, 3]).
rng = random.Random(13)
for op, name in enumerate(["batch_norm", "group_norm", "layer_norm"]):
    write("call", "valid_" + name, bytes([op]) + bytes(64))
    for i in range(12):
        write("call", "random_%s_%02d" % (name, i),
              bytes([op]) + bytes(rng.randrange(256) if rng.random() < 0.3 else 0 for _ in range(96)))
    for k in range(4):
        write("call", "row1_row3_wrapping_shape_%s_%d" % (name, k), bytes([op, 15, k]) + bytes(48))
write("call", "row11_one_value_per_channel", bytes([0, 1, 1, 2, 1]) + bytes(64))
# Kept as libFuzzer found them rather than written here: batch_norm_add_relu_keeps_nan (BatchNorm + add + ReLU in
# evaluation gave 0 for a NaN x, where torch.relu keeps NaN) and group_norm_negative_groups (num_groups -1).
