/* server/serve.c — `varserve serve`: the HTTP daemon (issue: the HTTP daemon). Until it lands,
 * the command says so plainly instead of pretending to serve. */
#include <stdio.h>

int vs_srv_serve_main(int argc, char **argv);

int vs_srv_serve_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "varserve: 'serve' is not built yet; use 'varserve generate' for now\n");
    return 2;
}
