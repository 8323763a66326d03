/*
 * The options tree (include/vimg/opts.h): parsing of "key=value" strings as
 * QEMU's QemuOpts/keyval read them, typed getters with QEMU's error texts,
 * and the "used" marks that let the core reject unknown keys by name.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/opts.h>

struct opt_entry {
    char *key;
    char *value;              /* NULL when the entry is a dictionary */
    struct vimg_opts *dict;
    bool is_used;
    bool is_number;           /* came from a JSON number (keeps its type in json: names) */
};

struct vimg_opts {
    struct opt_entry *entries;
    size_t n_entries;
    size_t n_alloc;
};

struct vimg_opts *
vimg_opts_new(void)
{
    return calloc(1, sizeof(struct vimg_opts));
}

void
vimg_opts_free(struct vimg_opts *opts)
{
    if (!opts)
        return;
    for (size_t i = 0; i < opts->n_entries; i++) {
        free(opts->entries[i].key);
        free(opts->entries[i].value);
        vimg_opts_free(opts->entries[i].dict);
    }
    free(opts->entries);
    free(opts);
}

static struct opt_entry *
opts_find(const struct vimg_opts *opts, const char *key, size_t key_len)
{
    for (size_t i = 0; i < opts->n_entries; i++) {
        struct opt_entry *e = &opts->entries[i];
        if (strlen(e->key) == key_len && memcmp(e->key, key, key_len) == 0)
            return e;
    }
    return NULL;
}

static struct opt_entry *
opts_append(struct vimg_opts *opts, const char *key, size_t key_len)
{
    struct opt_entry *e;

    if (opts->n_entries == opts->n_alloc) {
        size_t n = opts->n_alloc ? opts->n_alloc * 2 : 8;
        struct opt_entry *p = realloc(opts->entries, n * sizeof(*p));
        if (!p)
            return NULL;
        opts->entries = p;
        opts->n_alloc = n;
    }
    e = &opts->entries[opts->n_entries];
    memset(e, 0, sizeof(*e));
    e->key = strndup(key, key_len);
    if (!e->key)
        return NULL;
    opts->n_entries++;
    return e;
}

struct vimg_opts *
vimg_opts_dup(const struct vimg_opts *opts)
{
    struct vimg_opts *copy = vimg_opts_new();

    if (!copy)
        return NULL;
    for (size_t i = 0; i < opts->n_entries; i++) {
        const struct opt_entry *src = &opts->entries[i];
        struct opt_entry *dst = opts_append(copy, src->key, strlen(src->key));
        if (!dst)
            goto fail;
        dst->is_used = src->is_used;
        dst->is_number = src->is_number;
        if (src->dict) {
            dst->dict = vimg_opts_dup(src->dict);
            if (!dst->dict)
                goto fail;
        } else if (!(dst->value = strdup(src->value))) {
            goto fail;
        }
    }
    return copy;
fail:
    vimg_opts_free(copy);
    return NULL;
}

/*
 * Walks to the dictionary that holds the last component of path, creating
 * intermediate dictionaries when create is set. *leaf points into path.
 */
static struct vimg_opts *
opts_walk(struct vimg_opts *opts, const char *path, bool create, const char **leaf,
          struct vimg_error *err)
{
    const char *dot;

    while ((dot = strchr(path, '.')) != NULL) {
        struct opt_entry *e = opts_find(opts, path, (size_t)(dot - path));
        if (!e) {
            if (!create)
                return NULL;
            e = opts_append(opts, path, (size_t)(dot - path));
            if (!e || !(e->dict = vimg_opts_new())) {
                vimg_error_set(err, ENOMEM, "Out of memory");
                return NULL;
            }
        } else if (!e->dict) {
            if (create)
                vimg_error_set(err, EINVAL, "Parameter '%.*s' used inconsistently",
                               (int)(dot - path), path);
            return NULL;
        }
        opts = e->dict;
        path = dot + 1;
    }
    *leaf = path;
    return opts;
}

static int
opts_set(struct vimg_opts *opts, const char *path, const char *value, bool overwrite,
         struct vimg_error *err)
{
    const char *leaf;
    struct vimg_opts *dict;
    struct opt_entry *e;
    char *copy;

    vimg_error_clear(err);
    dict = opts_walk(opts, path, true, &leaf, err);
    if (!dict)
        return -EINVAL;
    if (*leaf == '\0')
        return vimg_error_set(err, EINVAL, "Invalid parameter ''");
    e = opts_find(dict, leaf, strlen(leaf));
    if (e && e->dict)
        return vimg_error_set(err, EINVAL, "Parameter '%s' used inconsistently", path);
    if (e && !overwrite)
        return 0;
    copy = strdup(value);
    if (!copy)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (!e && !(e = opts_append(dict, leaf, strlen(leaf)))) {
        free(copy);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    free(e->value);
    e->value = copy;
    e->is_used = false;
    e->is_number = false;
    return 0;
}

int
vimg_opts_set(struct vimg_opts *opts, const char *path, const char *value,
              struct vimg_error *err)
{
    return opts_set(opts, path, value, true, err);
}

int
vimg_opts_set_default(struct vimg_opts *opts, const char *path, const char *value,
                      struct vimg_error *err)
{
    return opts_set(opts, path, value, false, err);
}

/* prefix + key + tail, malloc'd; NULL when out of memory. */
static char *
opts_path_join(const char *prefix, const char *key, const char *tail)
{
    size_t len = strlen(prefix) + strlen(key) + strlen(tail) + 1;
    char *path = malloc(len);

    if (path)
        snprintf(path, len, "%s%s%s", prefix, key, tail);
    return path;
}

/* prefix is "" or a dotted path ending in '.'. */
static int
opts_merge_prefixed(struct vimg_opts *dst, const struct vimg_opts *src, const char *prefix,
                    struct vimg_error *err)
{
    for (size_t i = 0; i < src->n_entries; i++) {
        const struct opt_entry *e = &src->entries[i];
        char *path = opts_path_join(prefix, e->key, e->dict ? "." : "");
        int ret;

        if (!path)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (e->dict)
            ret = opts_merge_prefixed(dst, e->dict, path, err);
        else
            ret = vimg_opts_set(dst, path, e->value, err);
        free(path);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int
vimg_opts_merge(struct vimg_opts *dst, const struct vimg_opts *src, struct vimg_error *err)
{
    return opts_merge_prefixed(dst, src, "", err);
}

bool
vimg_opts_del(struct vimg_opts *opts, const char *path)
{
    const char *leaf;
    struct vimg_opts *dict = opts_walk(opts, path, false, &leaf, NULL);
    struct opt_entry *e;
    size_t index;

    if (!dict || !(e = opts_find(dict, leaf, strlen(leaf))))
        return false;
    index = (size_t)(e - dict->entries);
    free(e->key);
    free(e->value);
    vimg_opts_free(e->dict);
    memmove(e, e + 1, (dict->n_entries - index - 1) * sizeof(*e));
    dict->n_entries--;
    return true;
}

static struct opt_entry *
opts_lookup(const struct vimg_opts *opts, const char *path)
{
    const char *leaf;
    struct vimg_opts *dict = opts_walk((struct vimg_opts *)opts, path, false, &leaf, NULL);

    return dict ? opts_find(dict, leaf, strlen(leaf)) : NULL;
}

/* Marks the dictionaries on the way to path used, so "a.b" being read uses "a". */
static void
opts_mark_parents_used(struct vimg_opts *opts, const char *path)
{
    const char *dot;

    while ((dot = strchr(path, '.')) != NULL) {
        struct opt_entry *e = opts_find(opts, path, (size_t)(dot - path));
        if (!e || !e->dict)
            return;
        e->is_used = true;
        opts = e->dict;
        path = dot + 1;
    }
}

const char *
vimg_opts_get(struct vimg_opts *opts, const char *path)
{
    struct opt_entry *e = opts_lookup(opts, path);

    if (!e || e->dict)
        return NULL;
    e->is_used = true;
    opts_mark_parents_used(opts, path);
    return e->value;
}

const char *
vimg_opts_peek(const struct vimg_opts *opts, const char *path)
{
    struct opt_entry *e = opts_lookup(opts, path);

    return e && !e->dict ? e->value : NULL;
}

struct vimg_opts *
vimg_opts_get_dict(struct vimg_opts *opts, const char *path)
{
    struct opt_entry *e = opts_lookup(opts, path);

    if (!e || !e->dict)
        return NULL;
    e->is_used = true;
    opts_mark_parents_used(opts, path);
    return e->dict;
}

bool
vimg_opts_has(const struct vimg_opts *opts, const char *path)
{
    return opts_lookup(opts, path) != NULL;
}

bool
vimg_opts_is_empty(const struct vimg_opts *opts)
{
    return !opts || opts->n_entries == 0;
}

size_t
vimg_opts_count(const struct vimg_opts *opts)
{
    return opts->n_entries;
}

const char *
vimg_opts_key_at(const struct vimg_opts *opts, size_t index)
{
    return index < opts->n_entries ? opts->entries[index].key : NULL;
}

const char *
vimg_opts_value_at(const struct vimg_opts *opts, size_t index)
{
    return index < opts->n_entries ? opts->entries[index].value : NULL;
}

struct vimg_opts *
vimg_opts_dict_at(const struct vimg_opts *opts, size_t index)
{
    return index < opts->n_entries ? opts->entries[index].dict : NULL;
}

/* prefix is "" or a dotted path ending in '.'; paths too long for key are cut short. */
static bool
opts_find_unused(const struct vimg_opts *opts, const char *prefix, char *key, size_t key_size)
{
    for (size_t i = 0; i < opts->n_entries; i++) {
        const struct opt_entry *e = &opts->entries[i];
        char *path;
        bool is_found;

        if (!e->is_used) {
            snprintf(key, key_size, "%s%s", prefix, e->key);
            return true;
        }
        if (!e->dict)
            continue;
        path = opts_path_join(prefix, e->key, ".");
        if (!path) {
            /* Out of memory: report the dict rather than let a key pass. */
            snprintf(key, key_size, "%s%s", prefix, e->key);
            return true;
        }
        is_found = opts_find_unused(e->dict, path, key, key_size);
        free(path);
        if (is_found)
            return true;
    }
    return false;
}

bool
vimg_opts_find_unused(const struct vimg_opts *opts, char *key, size_t key_size)
{
    return opts_find_unused(opts, "", key, key_size);
}

static void
opts_set_used(struct vimg_opts *opts, bool is_used)
{
    for (size_t i = 0; i < opts->n_entries; i++) {
        opts->entries[i].is_used = is_used;
        if (opts->entries[i].dict)
            opts_set_used(opts->entries[i].dict, is_used);
    }
}

void
vimg_opts_mark_unused(struct vimg_opts *opts)
{
    opts_set_used(opts, false);
}

void
vimg_opts_mark_used(struct vimg_opts *opts)
{
    opts_set_used(opts, true);
}

/* Reads one key or value up to an unescaped separator; ",," is a comma. */
static char *
parse_token(const char **p, char stop, bool is_value)
{
    const char *s = *p;
    size_t cap = strlen(s) + 1, len = 0;
    char *out = malloc(cap);

    if (!out)
        return NULL;
    while (*s) {
        if (*s == ',') {
            if (is_value && s[1] == ',') {
                out[len++] = ',';
                s += 2;
                continue;
            }
            break;
        }
        if (!is_value && *s == stop)
            break;
        out[len++] = *s++;
    }
    out[len] = '\0';
    *p = s;
    return out;
}

int
vimg_opts_parse(struct vimg_opts *opts, const char *str, const char *implied_key,
                struct vimg_error *err)
{
    const char *p = str;
    bool is_first = true;
    int ret = 0;

    while (*p && ret == 0) {
        char *key = parse_token(&p, '=', false);
        char *value = NULL;

        if (!key)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (*p == '=') {
            p++;
            value = parse_token(&p, 0, true);
        } else if (is_first && implied_key) {
            /* The implied key's value may itself hold ",,". */
            const char *q = str;
            free(key);
            key = strdup(implied_key);
            value = parse_token(&q, 0, true);
            p = q;
        } else {
            value = strdup("on");
        }
        if (!key || !value)
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        else if (*key == '\0')
            ret = vimg_error_set(err, EINVAL, "Invalid parameter ''");
        else
            ret = vimg_opts_set(opts, key, value, err);
        free(key);
        free(value);
        if (*p == ',')
            p++;
        is_first = false;
    }
    return ret;
}

static int
size_suffix_shift(char c)
{
    switch (c) {
    case 'b': case 'B': return 0;
    case 'k': case 'K': return 10;
    case 'm': case 'M': return 20;
    case 'g': case 'G': return 30;
    case 't': case 'T': return 40;
    case 'p': case 'P': return 50;
    case 'e': case 'E': return 60;
    default: return -1;
    }
}

/*
 * Reads base-10 or base-16 digits. Returns how many there were; *is_overflow
 * says the value did not fit in 64 bits (*out is then meaningless).
 */
static size_t
size_parse_integer(const char **p, bool is_hex, uint64_t *out, bool *is_overflow)
{
    const char *start = *p, *s = *p;
    uint64_t v = 0;

    *is_overflow = false;
    for (; is_hex ? isxdigit((unsigned char)*s) : isdigit((unsigned char)*s); s++) {
        unsigned d = isdigit((unsigned char)*s)
                     ? (unsigned)(*s - '0')
                     : (unsigned)(tolower((unsigned char)*s) - 'a' + 10);
        if (__builtin_mul_overflow(v, is_hex ? 16 : 10, &v) ||
            __builtin_add_overflow(v, d, &v))
            *is_overflow = true;
    }
    *out = v;
    *p = s;
    return (size_t)(s - start);
}

/*
 * The fraction digits as QEMU weighs them: read as a double (correctly
 * rounded), then as a 64-bit binary fraction truncated toward zero. Digits
 * that round to 1.0 do not fit and count as no fraction at all, as in QEMU
 * ("1.99999999999999999k" is 1024). The "e-N" form keeps strtod away from
 * the locale's decimal point.
 */
static uint64_t
size_parse_fraction(const char *digits, size_t n_digits)
{
    /*
     * A fraction at or above 1e-25 has its rounding ties within its first 160
     * digits, so later ones only matter as "some are not zero"; one below
     * 1e-25 is below 2^-64 and truncates to 0.
     */
    enum { MAX_DIGITS = 160 };
    char buf[MAX_DIGITS + 32];
    size_t n = n_digits < MAX_DIGITS ? n_digits : MAX_DIGITS;
    double f;

    memcpy(buf, digits, n);
    for (size_t i = n; i < n_digits; i++) {
        if (digits[i] != '0') {
            buf[n++] = '1';
            break;
        }
    }
    snprintf(buf + n, sizeof(buf) - n, "e-%zu", n);
    f = strtod(buf, NULL);
    return f < 1.0 ? (uint64_t)(f * 0x1p64) : 0;
}

/*
 * QEMU's rules, learnt from qemu-img: leading white space and one '+' are
 * allowed; an integer part that overflows is out of range only when nothing
 * follows it; a fraction needs a suffix other than B unless it is below
 * 2^-64; the fraction's bytes are rounded half up.
 */
int
vimg_parse_size(const char *str, uint64_t *out)
{
    const char *p = str, *digits;
    uint64_t whole, frac64 = 0, frac_bytes, mul = 1, result;
    bool is_hex = false, is_overflow;
    size_t n_digits = 0;
    int shift;

    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+')
        p++;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        is_hex = true;
        p += 2;
    }
    if (size_parse_integer(&p, is_hex, &whole, &is_overflow) == 0)
        return -EINVAL;
    if (is_overflow)
        return *p ? -EINVAL : -ERANGE;
    if (*p == '.' && !is_hex) {
        digits = ++p;
        while (isdigit((unsigned char)*p))
            p++;
        n_digits = (size_t)(p - digits);
        if (n_digits > 0)
            frac64 = size_parse_fraction(digits, n_digits);
    }
    if (*p) {
        if ((shift = size_suffix_shift(*p)) < 0 || p[1])
            return -EINVAL;
        mul = 1ULL << shift;
    }
    if (frac64 && mul == 1)
        return -EINVAL;
    /* frac64 / 2^64 of mul bytes, rounded half up; mul <= 2^60, so no overflow. */
    frac_bytes = (uint64_t)(((unsigned __int128)frac64 * mul + (1ULL << 63)) >> 64);
    if (__builtin_mul_overflow(whole, mul, &result) ||
        __builtin_add_overflow(result, frac_bytes, &result))
        return -ERANGE;
    *out = result;
    return 0;
}

int
vimg_opts_get_size(struct vimg_opts *opts, const char *path, uint64_t def, uint64_t *out,
                   struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, path);
    int ret;

    if (!v) {
        *out = def;
        return 0;
    }
    ret = vimg_parse_size(v, out);
    if (ret == -ERANGE)
        return vimg_error_set(err, EINVAL, "Value '%s' is out of range for parameter '%s'",
                              v, path);
    if (ret < 0)
        return vimg_error_set(err, EINVAL,
                              "Parameter '%s' expects a non-negative number below 2^64\n"
                              "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                              "tera-, peta-\nand exabytes, respectively.", path);
    return 0;
}

int
vimg_opts_get_bool(struct vimg_opts *opts, const char *path, bool def, bool *out,
                   struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, path);

    if (!v) {
        *out = def;
        return 0;
    }
    if (strcmp(v, "on") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 ||
        strcmp(v, "y") == 0) {
        *out = true;
    } else if (strcmp(v, "off") == 0 || strcmp(v, "false") == 0 || strcmp(v, "no") == 0 ||
               strcmp(v, "n") == 0) {
        *out = false;
    } else {
        return vimg_error_set(err, EINVAL, "Parameter '%s' expects 'on' or 'off'", path);
    }
    return 0;
}

int
vimg_opts_get_number(struct vimg_opts *opts, const char *path, uint64_t def, uint64_t *out,
                     struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, path);
    char *end;

    if (!v) {
        *out = def;
        return 0;
    }
    /* strtoull's rules, as QEMU's: "-1" wraps to 2^64-1, but no leading space. */
    errno = 0;
    *out = strtoull(v, &end, 0);
    if (!*v || isspace((unsigned char)*v) || *end)
        return vimg_error_set(err, EINVAL, "Parameter '%s' expects a number", path);
    if (errno == ERANGE)
        return vimg_error_set(err, EINVAL, "Value '%s' is too large for parameter '%s'",
                              v, path);
    return 0;
}

int
vimg_opts_get_enum(struct vimg_opts *opts, const char *path, const char *const *values,
                   int def, int *out, struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, path);

    if (!v) {
        *out = def;
        return 0;
    }
    for (int i = 0; values[i]; i++) {
        if (strcmp(values[i], v) == 0) {
            *out = i;
            return 0;
        }
    }
    return vimg_error_set(err, EINVAL, "invalid parameter value: %s", v);
}

int
vimg_opts_set_number(struct vimg_opts *opts, const char *path, const char *value,
                     struct vimg_error *err)
{
    struct opt_entry *e;
    int ret = vimg_opts_set(opts, path, value, err);

    if (ret == 0 && (e = opts_lookup(opts, path)) != NULL)
        e->is_number = true;
    return ret;
}

bool
vimg_opts_is_number(const struct vimg_opts *opts, const char *path)
{
    struct opt_entry *e = opts_lookup(opts, path);

    return e && e->is_number;
}
