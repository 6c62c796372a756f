#!/usr/bin/env python3
"""Mean IoU between each sample's foreground and the mask it followed, for a
run of manifests/denoiser-guidance-mask.toml (docs/plugins/denoiser-guidance.md,
"What we measured"). Standard library only.

    python3 tests/benches/python/mask_iou.py runs/denoiser-guidance-mask

Foreground: a pixel whose brightest channel exceeds 64/255 (the shapes'
background is black); mask: samples/masks/NNNNN.png, class > 0.
"""
import glob
import os
import struct
import sys
import zlib


def read_png(path):
    """8-bit PNG (gray, RGB or RGBA, non-interlaced) as rows of pixel tuples."""
    data = open(path, "rb").read()
    pos, idat = 8, b""
    while pos < len(data):
        (ln,) = struct.unpack(">I", data[pos : pos + 4])
        typ, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + ln]
        pos += 12 + ln
        if typ == b"IHDR":
            w, h, _, ct = struct.unpack(">IIBB", body[:10])
        elif typ == b"IDAT":
            idat += body
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ct]
    raw, stride = zlib.decompress(idat), w * ch
    rows, prev, i = [], [0] * stride, 0
    for _ in range(h):
        f, line = raw[i], raw[i + 1 : i + 1 + stride]
        i += 1 + stride
        cur = [0] * stride
        for x in range(stride):
            a = cur[x - ch] if x >= ch else 0
            b, c = prev[x], (prev[x - ch] if x >= ch else 0)
            if f == 0:
                v = line[x]
            elif f == 1:
                v = line[x] + a
            elif f == 2:
                v = line[x] + b
            elif f == 3:
                v = line[x] + (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                v = line[x] + (a if pa <= pb and pa <= pc else (b if pb <= pc else c))
            cur[x] = v & 255
        rows.append([tuple(cur[k * ch : (k + 1) * ch]) for k in range(w)])
        prev = cur
    return rows


def main(run):
    ious = []
    for f in sorted(glob.glob(os.path.join(run, "samples", "[0-9]*.png"))):
        img = read_png(f)
        mask = read_png(os.path.join(run, "samples", "masks", os.path.basename(f)))
        inter = union = 0
        for row_i, row_m in zip(img, mask):
            for p, m in zip(row_i, row_m):
                fg, mk = max(p[:3]) > 64, m[0] > 0
                inter += fg and mk
                union += fg or mk
        ious.append(inter / max(union, 1))
    print(f"{run}: mean IoU {sum(ious) / len(ious):.3f} over {len(ious)} samples")


if __name__ == "__main__":
    main(sys.argv[1])
