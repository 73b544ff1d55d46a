/* Pillow-exact resizing (resize.c), internal to core/io: the image loader
 * (loader.c) resizes and crops decoded images with it. */
#ifndef DR_IO_RESIZE_H
#define DR_IO_RESIZE_H

#include <stdint.h>

/* NULL for a valid filter number (1..5, Pillow's), else what is wrong. */
const char *dr_resize_filter_check(int32_t filter);

/* Resizes the c planes of h x w bytes at src as Pillow to rw x rh and writes the
 * window [x0, x0 + ow) x [y0, y0 + oh) of the result as bytes (dst_u8) or as
 * float byte / 255 (dst_f32; exactly one of the two is non-NULL), planes of oh x ow.
 * Returns 0, or -1 when out of memory. */
int dr_resize_window(const uint8_t *src, int c, int h, int w, int rw, int rh, int x0, int y0,
                     int ow, int oh, int32_t filter, uint8_t *dst_u8, float *dst_f32);

/* torchvision Resize(size) + CenterCrop(size): the resized sides rw x rh and the
 * crop's corner. Returns -1 when the longer side would pass 2^30 pixels. */
int dr_resize_crop_geometry(int w, int h, int size, int *rw, int *rh, int *x0, int *y0);

#endif
