#!/usr/bin/env python3
"""DiffusionDB prompt metadata (parquet) -> a prompt file for diffrl.prompts.file.

    python3 tools/diffusiondb_to_txt.py metadata.parquet -o diffusiondb.txt
    python3 tools/diffusiondb_to_txt.py metadata-large.parquet --nsfw-max 0.5 -o prompts.txt

DiffusionDB (poloclub/diffusiondb) ships its metadata as parquet with one row per
image: `prompt`, `image_nsfw`, `prompt_nsfw`, ... Prompts repeat across images;
this script writes each distinct prompt once, in first-seen order, one a line, with
newlines and tabs inside a prompt turned into spaces (a prompt file is line
based), optionally dropping rows whose prompt_nsfw score is above --nsfw-max.
diffrl does its own de-duplication, filters and held-out split when it reads the
file (docs/data.md); this only flattens the table. Reads the parquet in row
batches, so the 14M-row metadata-large.parquet never loads whole (the set of
seen prompts is the memory it needs; --no-dedupe drops it). Needs pyarrow
(pip install pyarrow); optional, diffrl itself never runs Python.
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('parquet', nargs='+', help='DiffusionDB metadata parquet file(s)')
    ap.add_argument('-o', '--output', required=True, help='the .txt prompt file to write')
    ap.add_argument('--column', default='prompt', help='the prompt column (default: prompt)')
    ap.add_argument('--nsfw-max', type=float, default=None,
                    help='drop rows whose prompt_nsfw is above this (0..1)')
    ap.add_argument('--no-dedupe', action='store_true', help='write repeated prompts again')
    args = ap.parse_args()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit('diffusiondb_to_txt: needs pyarrow (pip install pyarrow)')

    seen = None if args.no_dedupe else set()
    rows = written = dropped = 0
    with open(args.output, 'w', encoding='utf-8', newline='\n') as out:
        for path in args.parquet:
            f = pq.ParquetFile(path)
            names = f.schema_arrow.names
            if args.column not in names:
                sys.exit("diffusiondb_to_txt: %s has no column '%s' (columns: %s)"
                         % (path, args.column, ', '.join(names)))
            cols = [args.column]
            if args.nsfw_max is not None:
                if 'prompt_nsfw' not in names:
                    sys.exit("diffusiondb_to_txt: %s has no prompt_nsfw column for --nsfw-max" % path)
                cols.append('prompt_nsfw')
            for batch in f.iter_batches(batch_size=65536, columns=cols):
                prompts = batch.column(0).to_pylist()
                nsfw = batch.column(1).to_pylist() if len(cols) > 1 else None
                for i, p in enumerate(prompts):
                    rows += 1
                    if p is None:
                        continue
                    if nsfw is not None and nsfw[i] is not None and nsfw[i] > args.nsfw_max:
                        dropped += 1
                        continue
                    p = ' '.join(p.replace('\r', ' ').replace('\n', ' ').replace('\t', ' ').split())
                    if not p:
                        continue
                    if seen is not None:
                        if p in seen:
                            continue
                        seen.add(p)
                    out.write(p + '\n')
                    written += 1
    print('diffusiondb_to_txt: %d rows, %d prompts written to %s%s' % (
        rows, written, args.output, ', %d dropped by --nsfw-max' % dropped if args.nsfw_max is not None else ''))


if __name__ == '__main__':
    main()
