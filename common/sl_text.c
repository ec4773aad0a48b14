#include "sl_text.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Decodes buf[0..len) as UTF-8; when printable, code points below U+0020,
 * U+007F and U+0080..U+009F are refused too. */
static bool utf8_check(const unsigned char *s, size_t len, bool printable)
{
    size_t i = 0;

    if (s == NULL)
        return len == 0;
    while (i < len) {
        unsigned char c = s[i];
        uint32_t cp;
        size_t n;

        if (c < 0x80) {
            n = 0;
            cp = c;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n > 0 && i + n >= len)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        if (printable && (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)))
            return false;
        i += n + 1;
    }
    return true;
}

bool sl_utf8_valid(const void *buf, size_t len)
{
    return utf8_check(buf, len, false);
}

bool sl_utf8_printable(const void *buf, size_t len)
{
    return utf8_check(buf, len, true);
}

bool sl_json_has_nul_escape(const char *buf, size_t len)
{
    if (buf == NULL)
        return false;
    for (size_t i = 0; i + 1 < len; i++) {
        if (buf[i] != '\\')
            continue;
        if (buf[i + 1] == 'u' && i + 5 < len && memcmp(buf + i + 2, "0000", 4) == 0)
            return true;
        i++; /* skip the escaped character, so "\\\\u0000" is plain text */
    }
    return false;
}

static bool id_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

bool sl_text_mentions(const char *text, const char *name)
{
    size_t nl;

    if (text == NULL || name == NULL || (nl = strlen(name)) == 0)
        return false;
    for (const char *p = strchr(text, '@'); p != NULL; p = strchr(p + 1, '@')) {
        if (p > text && id_char(p[-1]))
            continue;
        if (strncasecmp(p + 1, name, nl) == 0 && !id_char(p[1 + nl]))
            return true;
    }
    return false;
}
