/* Checks on text that comes from outside (client frames, token claims):
 * the one UTF-8 validator and the one check for an escaped NUL in JSON.
 * Pure functions, safe from any thread. */
#ifndef SL_TEXT_H
#define SL_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* True when buf[0..len) is well-formed UTF-8: no overlong forms, no
 * surrogates, nothing above U+10FFFF, no truncated sequence. NUL bytes are
 * allowed (callers that forbid them check separately). len 0 is valid. */
bool sl_utf8_valid(const void *buf, size_t len);

/* Like sl_utf8_valid(), and besides no C0 control (U+0000..U+001F), no DEL
 * (U+007F) and no C1 control (U+0080..U+009F): text fit to show. */
bool sl_utf8_printable(const void *buf, size_t len);

/* True when the JSON text buf[0..len) holds the escape \u0000. cJSON ends
 * a string at the NUL it decodes, so "a\u0000.b" would read as the valid
 * id "a": callers refuse such text. An escaped backslash is skipped, so
 * "\\u0000" (a backslash, then the letters u0000) is plain text. */
bool sl_json_has_nul_escape(const char *buf, size_t len);

/* True when text mentions @name: '@' not preceded by an id character
 * ([A-Za-z0-9_-]), then name (ASCII case-insensitive), then no id
 * character. The one rule for the orchestrator's "mention" agents and the
 * worker's agent-message check. */
bool sl_text_mentions(const char *text, const char *name);

#endif
