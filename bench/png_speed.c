/* bench/png_speed.c — how long server/png.c's two encodings take on one image, 20 runs each:
 * the final images' (zlib level 6, libpng's adaptive filters) and the streamed previews'
 * (level 1, the SUB filter, zlib's run-length strategy).
 *
 *     cc -O2 -I. -o build/png_speed bench/png_speed.c build/libvarserve.a -lpng -lm
 *     ./build/varserve generate --model tests/fixtures/tiny/model.safetensors --labels 3 --out build/p
 *     ./build/png_speed build/p-0.png
 */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/clock.h"
#include "server/png.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE.png (8-bit RGB)\n", argv[0]);
        return 2;
    }
    png_image im = {.version = PNG_IMAGE_VERSION};
    if (!png_image_begin_read_from_file(&im, argv[1])) {
        fprintf(stderr, "%s: %s\n", argv[1], im.message);
        return 1;
    }
    im.format = PNG_FORMAT_RGB;
    unsigned char *rgb = malloc(PNG_IMAGE_SIZE(im));
    if (!rgb || !png_image_finish_read(&im, NULL, rgb, 0, NULL)) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        return 1;
    }
    const char *name[2] = {"final (level 6, adaptive filters)", "preview (level 1, SUB, RLE)"};
    for (int k = 0; k < 2; k++) {
        size_t len = 0;
        double t0 = vs_now_s();
        for (int r = 0; r < 20; r++) {
            unsigned char *out = NULL;
            vs_err err = {0};
            if ((k ? vs_srv_png_encode_preview : vs_srv_png_encode)(rgb, (int)im.width, (int)im.height, &out, &len,
                                                                      &err) != VS_OK) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            free(out);
        }
        printf("%ux%u %s: %.2f ms, %zu bytes\n", im.width, im.height, name[k], (vs_now_s() - t0) / 20 * 1e3, len);
    }
    free(rgb);
    return 0;
}
