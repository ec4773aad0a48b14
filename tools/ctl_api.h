/* sluicectl's server API commands (publish, disconnect, presence, history):
 * HTTP requests to a gateway's /v1/api with libcurl (docs/operations.md,
 * "Server API"). */
#ifndef CTL_API_H
#define CTL_API_H

#include <stdbool.h>
#include <stdio.h>

/* True when cmd is one of the API commands. */
bool ctl_api_is_command(const char *cmd);

/* Runs argv[1] (an API command) with its options argv[2..]. Prints the
 * answer's JSON body on stdout. Returns the exit code: 0 for a 2xx answer,
 * 1 for an error answer or no answer (the status and body on stderr), 2
 * for bad options. */
int ctl_api_main(int argc, char **argv);

/* The usage lines of the API commands. */
void ctl_api_usage(FILE *f);

#endif
