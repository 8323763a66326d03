/*
 * libFuzzer target for vimg_parse_size (src/core/opts.c). Every input is also
 * parsed by a slow reference written from qemu-img's observed behaviour: the
 * result class (value, EINVAL, ERANGE) must always agree, the value must
 * agree exactly when there is no fraction, and with a fraction it must be
 * the exact decimal value times the suffix, rounded, within the precision of
 * a double (QEMU weighs the fraction as a double).
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/opts.h>

struct ref_size {
    int ret;                    /* 0, -EINVAL or -ERANGE */
    unsigned __int128 whole;    /* integer part (saturated at 2^100) */
    unsigned shift;             /* suffix */
    bool has_fraction;          /* a non-zero fraction digit appears */
    long double fraction;       /* the fraction, to long double precision */
    uint64_t value;             /* exact when !has_fraction */
};

static int
ref_shift(char c)
{
    static const char suffixes[] = "bkmgtpe";
    const char *p = strchr(suffixes, tolower((unsigned char)c));

    return c && p ? (int)(p - suffixes) * 10 : -1;
}

static int
ref_digit(char c, bool is_hex)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (is_hex && c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (is_hex && c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Integer part, saturating far above 2^64; returns the digit count. */
static size_t
ref_integer(const char **p, bool is_hex, unsigned __int128 *out)
{
    const unsigned __int128 cap = (unsigned __int128)1 << 100;
    unsigned __int128 v = 0;
    size_t n = 0;
    int d;

    for (; (d = ref_digit(**p, is_hex)) >= 0; (*p)++, n++) {
        v = v * (is_hex ? 16 : 10) + (unsigned)d;
        if (v > cap)
            v = cap;
    }
    *out = v;
    return n;
}

static void
ref_fraction(const char **p, struct ref_size *r)
{
    long double scale = 0.1L;

    for (; isdigit((unsigned char)**p); (*p)++) {
        r->fraction += (**p - '0') * scale;
        scale /= 10;
        if (**p != '0')
            r->has_fraction = true;
    }
}

static void
ref_parse(const char *s, struct ref_size *r)
{
    bool is_hex = false;
    int shift = 0;

    memset(r, 0, sizeof(*r));
    while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
        s++;
    s += *s == '+';
    if (s[0] == '0' && tolower((unsigned char)s[1]) == 'x') {
        is_hex = true;
        s += 2;
    }
    r->ret = -EINVAL;
    if (ref_integer(&s, is_hex, &r->whole) == 0)
        return;
    if (r->whole > UINT64_MAX) {
        r->ret = *s ? -EINVAL : -ERANGE;
        return;
    }
    if (*s == '.' && !is_hex) {
        s++;
        ref_fraction(&s, r);
    }
    if (*s && ((shift = ref_shift(*s)) < 0 || s[1]))
        return;
    r->shift = (unsigned)shift;
    r->ret = 0;
    if ((r->whole << r->shift) > UINT64_MAX)
        r->ret = -ERANGE;
    else
        r->value = (uint64_t)(r->whole << r->shift);
}

/*
 * With a fraction, QEMU's double may differ from the exact digits by one
 * part in 2^53 of the fraction, and a fraction that rounds to 1.0 counts as
 * none. Below 2^-64 it counts as none too, even for bytes.
 */
static void
check_fraction(const char *s, const struct ref_size *r, int ret, uint64_t got)
{
    long double exact = r->fraction * (long double)((uint64_t)1 << r->shift);
    long double slack = (long double)((uint64_t)1 << r->shift) / 0x1p52L + 1.0L;
    long double extra = (long double)got - (long double)r->value;

    if (r->shift == 0) {
        /* Bytes: only a fraction QEMU reads as 0 (or as 1.0) is accepted. */
        if (ret == 0 && (got != r->value ||
                         (r->fraction > 0x1p-63L && r->fraction < 1.0L - 0x1p-54L)))
            goto mismatch;
        if (ret == -EINVAL && r->fraction < 0x1p-65L)
            goto mismatch;
        return;
    }
    if (ret == -ERANGE && (long double)r->value + exact + slack >= 0x1p64L)
        return;     /* the fraction pushes the value past 2^64 */
    if (ret < 0)
        goto mismatch;
    if (r->fraction > 1.0L - 0x1p-52L && got == r->value)
        return;     /* rounded to 1.0, dropped as QEMU does */
    if (extra < exact - slack || extra > exact + slack)
        goto mismatch;
    return;
mismatch:
    fprintf(stderr, "size '%s': got %d/%llu, reference fraction %.25Lf shift %u\n",
            s, ret, (unsigned long long)got, r->fraction, r->shift);
    abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    struct ref_size ref;
    uint64_t got = 0;
    int ret;

    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    ret = vimg_parse_size(s, &got);
    ref_parse(s, &ref);
    if (ref.has_fraction && (ref.ret == 0 || ret == 0)) {
        check_fraction(s, &ref, ret, got);
    } else if (ret != ref.ret || (ret == 0 && got != ref.value)) {
        fprintf(stderr, "size '%s': got %d/%llu, reference %d/%llu\n", s, ret,
                (unsigned long long)got, ref.ret, (unsigned long long)ref.value);
        abort();
    }
    free(s);
    return 0;
}
