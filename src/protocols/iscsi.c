/*
 * The iscsi protocol: LUNs of an iSCSI target, reached through libiscsi.
 * Spec: SBC-3 (READ/WRITE(16), WRITE SAME(16), UNMAP, GET LBA STATUS, READ
 * CAPACITY(10/16), SYNCHRONIZE CACHE(10/16), the Block Limits and Logical
 * Block Provisioning VPD pages), MMC for CD-ROM LUNs, RFC 7143 for the
 * session (libiscsi's part). Filenames, options and messages follow qemu-img's
 * iscsi driver:
 *   iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET-IQN/LUN   (iser:// likewise)
 * CHAP credentials come from the URL or, when it has none, from the
 * environment (LIBISCSI_CHAP_USERNAME / LIBISCSI_CHAP_PASSWORD), which keeps
 * them out of the process list. The --image-opts keys are transport, portal,
 * target, lun, user, password, password-secret, initiator-name, header-digest
 * (crc32c, crc32c-none, none-crc32c, none) and timeout (seconds, 0 = none).
 *
 * Configuration file: QEMU's tools take session settings from `-readconfig`
 * (the manual's example); vimg's read them from the file named by the
 * environment variable VIMG_ISCSI_CONFIG. Its format is QEMU's:
 *
 *     # comment
 *     [iscsi]
 *       user = "CHAP username"
 *       password = "CHAP password"
 *       password-secret = "secret object id"
 *       initiator-name = "iqn.qemu.test:my-initiator"
 *       header-digest = "CRC32C"      # CRC32C|CRC32C-NONE|NONE-CRC32C|NONE
 *       timeout = "5"
 *     [iscsi "iqn.target.name"]
 *       ...the same keys, for that target only...
 *
 * As in QEMU, the section named for the target replaces the plain [iscsi]
 * section (keys do not fall through from one to the other); settings given
 * in the filename or as options win over the file. Other sections ([drive],
 * ...) are skipped. With no section for the target, QEMU takes the first
 * iscsi group of any id, vimg the plain [iscsi] section: the same when [iscsi]
 * comes first, and qemu-img (no -readconfig) cannot show the difference; a
 * section for another target never applies here. The initiator name
 * defaults to iqn.2008-11.org.linux-kvm (the tools have no VM name or UUID
 * to append).
 *
 * Requests: one session per open LUN, many commands in flight on it. An event
 * thread owns the socket (poll + iscsi_service); callers queue a task under
 * the context lock and sleep until its callback has run. Open-time commands
 * use libiscsi's synchronous calls before that thread starts.
 *
 * Leaves out: persistent reservations, the QEMU-only scsi-generic passthrough
 * of non-disk LUNs (they open with size 0, as in qemu-img), growing a LUN.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <vimg/json.h>
#include <vimg/object.h>

#include "core/driver.h"

#define ISCSI_DEFAULT_INITIATOR "iqn.2008-11.org.linux-kvm"
#define ISCSI_CONFIG_ENV        "VIMG_ISCSI_CONFIG"
#define ISCSI_MAX_TRANSFER      (16u << 20)     /* the largest READ/WRITE we send */
#define ISCSI_MAX_RANGE         (1u << 30)      /* the largest WRITE SAME/UNMAP range */
#define ISCSI_PIECE             (512u << 10)    /* a larger read/write is sent in pieces */
#define ISCSI_MAX_PIECES        64
#define ISCSI_MAX_RETRIES       5               /* UNIT ATTENTION, BUSY, TASK SET FULL */
#define ISCSI_RECONNECTS        3               /* then the session is given up */
#define ISCSI_POLL_MS           250             /* timeouts and reconnects are checked */
#define ISCSI_TYPE_DISK         0x00
#define ISCSI_TYPE_ROM          0x05
#define ISCSI_MODE_WP           0x80            /* device-specific parameter bits */
#define ISCSI_MODE_DPOFUA       0x10

/* Settings of one open, from the filename, the options and the config file. */
struct iscsi_settings {
    char *transport, *portal, *target;
    char *user, *password, *password_secret;
    char *initiator_name, *header_digest;
    char *lun;                          /* as given, for the node's name */
    uint64_t lun_number, timeout;
};

struct iscsi_req;

struct iscsi_state {
    struct iscsi_context *ctx;
    int lun;
    int type;                           /* peripheral device type */
    uint32_t block_size;
    uint64_t n_blocks;
    bool is_rom;                        /* MMC: READ(10)/WRITE(10), capacity from (10) */
    bool can_fua;                       /* DPOFUA in the mode parameter header */
    bool lbpme, lbprz, lbpu, lbpws;     /* READ CAPACITY(16) and the LBP VPD page */
    bool no_write_same, no_lba_status, no_sync10;
    bool is_writable;                   /* opened read-write: flushed at close */
    uint32_t max_ws_blocks, max_unmap_blocks, max_xfer_blocks;     /* Block Limits; 0 = none */
    pthread_t thread;
    bool has_thread;
    int wake_fd;                        /* eventfd: new work for the event thread */
    pthread_mutex_t lock;               /* protects ctx, reqs, is_stopping, is_dead, dead_msg */
    struct iscsi_req *reqs;             /* queued or in flight */
    bool is_stopping;
    bool is_dead;                       /* the session is lost: every request fails */
    char dead_msg[256];
};

/* One command: built by iscsi_task_new, completed by iscsi_req_done. */
enum iscsi_op {
    ISCSI_OP_READ,
    ISCSI_OP_WRITE,
    ISCSI_OP_WRITE_SAME,
    ISCSI_OP_UNMAP,
    ISCSI_OP_LBA_STATUS,
    ISCSI_OP_SYNC10,
    ISCSI_OP_SYNC16,
};

struct iscsi_req {
    struct iscsi_req *next, *prev;
    pthread_cond_t cond;
    enum iscsi_op op;
    uint64_t lba;
    uint32_t n_blocks;
    struct scsi_iovec *iov;
    int n_iov;
    bool is_fua, is_unmap;
    struct unmap_list range;
    uint8_t *block;                     /* WRITE SAME payload */
    bool is_done, is_abandoned;
    int status;
    struct scsi_task *task;
    char msg[256];
};

static const char *const iscsi_protocols[] = { "iscsi", "iser", NULL };

static const char *const iscsi_digests[] = { "crc32c", "none", "crc32c-none", "none-crc32c",
                                             NULL };
static const enum iscsi_header_digest iscsi_digest_values[] = {
    ISCSI_HEADER_DIGEST_CRC32C, ISCSI_HEADER_DIGEST_NONE,
    ISCSI_HEADER_DIGEST_CRC32C_NONE, ISCSI_HEADER_DIGEST_NONE_CRC32C,
};

static void
iscsi_settings_free(struct iscsi_settings *c)
{
    free(c->transport);
    free(c->portal);
    free(c->target);
    free(c->user);
    free(c->password);
    free(c->password_secret);
    free(c->initiator_name);
    free(c->header_digest);
    free(c->lun);
    memset(c, 0, sizeof(*c));
}

/* Replaces *slot with a copy of value (NULL clears it). */
static int
iscsi_set_str(char **slot, const char *value, struct vimg_error *err)
{
    char *copy = value ? strdup(value) : NULL;

    if (value && !copy)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    free(*slot);
    *slot = copy;
    return 0;
}

/* The filename, parsed by libiscsi as qemu-img does (which applies LIBISCSI_CHAP_*). */
static int
iscsi_parse_filename(const char *filename, struct iscsi_settings *c, struct vimg_error *err)
{
    struct iscsi_context *tmp = iscsi_create_context(ISCSI_DEFAULT_INITIATOR);
    struct iscsi_url *url;
    char lun[16];
    int ret = 0;

    if (!tmp)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    url = iscsi_parse_full_url(tmp, filename);
    if (!url) {
        iscsi_destroy_context(tmp);
        return vimg_error_set(err, EINVAL, "Failed to parse URL : %s", filename);
    }
    snprintf(lun, sizeof(lun), "%d", url->lun);
    c->lun_number = (uint64_t)url->lun;
    if ((ret = iscsi_set_str(&c->transport, url->transport == ISER_TRANSPORT ? "iser" : "tcp",
                             err)) < 0 ||
        (ret = iscsi_set_str(&c->portal, url->portal, err)) < 0 ||
        (ret = iscsi_set_str(&c->target, url->target, err)) < 0 ||
        (ret = iscsi_set_str(&c->lun, lun, err)) < 0 ||
        (url->user[0] && (ret = iscsi_set_str(&c->user, url->user, err)) < 0) ||
        (url->passwd[0] && (ret = iscsi_set_str(&c->password, url->passwd, err)) < 0))
        ret = ret < 0 ? ret : -ENOMEM;
    iscsi_destroy_url(url);
    iscsi_destroy_context(tmp);
    return ret;
}

/* The option keys; each wins over what the filename said. */
static int
iscsi_read_opts(struct vimg_opts *opts, struct iscsi_settings *c, struct vimg_error *err)
{
    static const struct { const char *key; size_t off; } keys[] = {
        { "transport", offsetof(struct iscsi_settings, transport) },
        { "portal", offsetof(struct iscsi_settings, portal) },
        { "target", offsetof(struct iscsi_settings, target) },
        { "user", offsetof(struct iscsi_settings, user) },
        { "password", offsetof(struct iscsi_settings, password) },
        { "password-secret", offsetof(struct iscsi_settings, password_secret) },
        { "initiator-name", offsetof(struct iscsi_settings, initiator_name) },
        { "header-digest", offsetof(struct iscsi_settings, header_digest) },
    };
    int ret;

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = vimg_opts_get(opts, keys[i].key);
        if (v && (ret = iscsi_set_str((char **)((char *)c + keys[i].off), v, err)) < 0)
            return ret;
    }
    if (vimg_opts_has(opts, "lun")) {
        if ((ret = vimg_opts_get_number(opts, "lun", 0, &c->lun_number, err)) < 0)
            return ret;
        if (c->lun_number > INT32_MAX)
            return vimg_error_set(err, EINVAL, "Parameter 'lun' expects a number");
        if ((ret = iscsi_set_str(&c->lun, vimg_opts_peek(opts, "lun"), err)) < 0)
            return ret;
    }
    return vimg_opts_get_number(opts, "timeout", c->timeout, &c->timeout, err);
}

/* QEMU names the node by a json: of its options, keys in QEMU's dictionary order. */
static int
iscsi_set_node_name(struct vimg_node *node, const struct iscsi_settings *c,
                    struct vimg_error *err)
{
    const struct { const char *key; const char *value; } keys[] = {
        { "password-secret", c->password_secret }, { "lun", c->lun },
        { "portal", c->portal }, { "header-digest", c->header_digest },
        { "initiator-name", c->initiator_name }, { "driver", "iscsi" },
        { "transport", c->transport }, { "user", c->user },
        { "password", c->password }, { "target", c->target },
    };
    json_t *desc = json_object();
    char *text, *name;

    for (size_t i = 0; desc && i < sizeof(keys) / sizeof(keys[0]); i++)
        if (keys[i].value)
            json_object_set_new(desc, keys[i].key, json_string(keys[i].value));
    text = desc ? vimg_json_dumps(desc, false) : NULL;
    json_decref(desc);
    if (!text || asprintf(&name, "json:%s", text) < 0) {
        free(text);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    free(text);
    free(node->filename);
    node->filename = name;
    return 0;
}

/* One `key = "value"` line of the config file, applied when the key is still unset. */
static int
iscsi_config_apply(struct iscsi_settings *c, const char *key, const char *value,
                   const char *path, int line_no, struct vimg_error *err)
{
    char **slot = NULL;
    char *end;

    if (strcmp(key, "user") == 0)
        slot = &c->user;
    else if (strcmp(key, "password") == 0)
        slot = &c->password;
    else if (strcmp(key, "password-secret") == 0)
        slot = &c->password_secret;
    else if (strcmp(key, "initiator-name") == 0)
        slot = &c->initiator_name;
    else if (strcmp(key, "header-digest") == 0)
        slot = &c->header_digest;
    else if (strcmp(key, "timeout") == 0) {
        unsigned long long t = strtoull(value, &end, 10);
        if (!*value || *end || *value == '-')
            return vimg_error_set(err, EINVAL, "%s:%d: Parameter 'timeout' expects a number",
                                  path, line_no);
        if (c->timeout == 0)
            c->timeout = t;
        return 0;
    } else
        return vimg_error_set(err, EINVAL, "%s:%d: Invalid parameter '%s'", path, line_no, key);
    if (*slot)
        return 0;
    if (iscsi_set_str(slot, value, err) < 0)
        return -ENOMEM;
    /* The file takes the manual's upper-case digests; options take QAPI's lower case. */
    if (slot == &c->header_digest)
        for (char *p = *slot; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    return 0;
}

static char *
iscsi_trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

/*
 * Which section a `[...]` header opens: 0 another group, 1 [iscsi],
 * 2 [iscsi "TARGET"] for this target, 3 [iscsi "..."] for another target.
 */
static int
iscsi_config_section(const char *header, const char *target)
{
    size_t tlen = strlen(target);

    if (strcmp(header, "iscsi") == 0)
        return 1;
    if (strncmp(header, "iscsi", 5) != 0 || !isspace((unsigned char)header[5]))
        return 0;
    header = iscsi_trim((char *)header + 5);
    if (header[0] == '"' && strncmp(header + 1, target, tlen) == 0 &&
        header[tlen + 1] == '"' && header[tlen + 2] == '\0')
        return 2;
    return 3;
}

/* Reads the file into the settings: the target's section if it has one, else [iscsi]. */
static int
iscsi_read_config(const char *path, struct iscsi_settings *c, struct vimg_error *err)
{
    FILE *f = fopen(path, "re");
    char line[1024];
    bool has_target_section = false;
    int pass, line_no, section, ret = 0;

    if (!f)
        return vimg_error_set(err, errno, "Could not read iSCSI config file '%s': %s", path,
                              strerror(errno));
    /* Pass 0 looks for the target's section; pass 1 applies the chosen one. */
    for (pass = 0; pass < 2 && ret == 0; pass++) {
        rewind(f);
        line_no = 0;
        section = 0;
        while (ret == 0 && fgets(line, sizeof(line), f)) {
            char *s = iscsi_trim(line), *eq, *key, *value;
            size_t len;
            line_no++;
            if (*s == '\0' || *s == '#')
                continue;
            len = strlen(s);
            if (*s == '[') {
                if (s[len - 1] != ']') {
                    ret = vimg_error_set(err, EINVAL, "%s:%d: parse error", path, line_no);
                    break;
                }
                s[len - 1] = '\0';
                section = iscsi_config_section(iscsi_trim(s + 1), c->target);
                has_target_section |= section == 2;
                continue;
            }
            eq = strchr(s, '=');
            if (!eq || section == 0) {
                if (!eq)
                    ret = vimg_error_set(err, EINVAL, "%s:%d: parse error", path, line_no);
                continue;
            }
            *eq = '\0';
            key = iscsi_trim(s);
            value = iscsi_trim(eq + 1);
            len = strlen(value);
            if (len < 2 || value[0] != '"' || value[len - 1] != '"') {
                ret = vimg_error_set(err, EINVAL, "%s:%d: parse error", path, line_no);
                break;
            }
            value[len - 1] = '\0';
            if (pass == 1 && section == (has_target_section ? 2 : 1))
                ret = iscsi_config_apply(c, key, value + 1, path, line_no, err);
        }
    }
    fclose(f);
    return ret;
}

/* Checks that come after every source has been read, in qemu-img's order. */
static int
iscsi_check_settings(struct iscsi_settings *c, struct vimg_error *err)
{
    char *data;
    size_t len;
    int ret;

    if (!c->transport || !c->portal || !c->target)
        return vimg_error_set(err, EINVAL, "Need all of transport, portal and target options");
    if (strcmp(c->transport, "tcp") != 0 && strcmp(c->transport, "iser") != 0)
        return vimg_error_set(err, EINVAL, "Unknown transport: %s", c->transport);
    if (c->header_digest) {
        bool is_known = false;
        for (int i = 0; iscsi_digests[i]; i++)
            is_known |= strcmp(c->header_digest, iscsi_digests[i]) == 0;
        if (!is_known)
            return vimg_error_set(err, EINVAL, "Invalid header-digest setting : %s",
                                  c->header_digest);
    }
    if (c->password && c->password_secret)
        return vimg_error_set(err, EINVAL, "'password' and 'password-secret' properties are "
                              "mutually exclusive");
    if (c->password_secret) {
        if ((ret = vimg_secret_lookup(c->password_secret, &data, &len, err)) < 0)
            return ret;
        free(c->password);
        c->password = strndup(data, len);
        free(data);
        if (!c->password)
            return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (c->user && !c->password)
        return vimg_error_set(err, EINVAL, "CHAP username specified but no password was given");
    return 0;
}

/* Everything the open needs to know, from filename, options and config, checked. */
static int
iscsi_gather_settings(struct vimg_node *node, struct vimg_opts *opts, struct iscsi_settings *c,
                      struct vimg_error *err)
{
    const char *filename = vimg_opts_get(opts, "filename");
    const char *config = getenv(ISCSI_CONFIG_ENV);
    int ret;

    if (filename && (ret = iscsi_parse_filename(filename, c, err)) < 0)
        return ret;
    if ((ret = iscsi_read_opts(opts, c, err)) < 0)
        return ret;
    if (!c->transport || !c->portal || !c->target)
        return vimg_error_set(err, EINVAL, "Need all of transport, portal and target options");
    if ((ret = iscsi_set_node_name(node, c, err)) < 0)
        return ret;
    if (config && *config && (ret = iscsi_read_config(config, c, err)) < 0)
        return ret;
    return iscsi_check_settings(c, err);
}

static struct iscsi_context *
iscsi_new_context(const struct iscsi_settings *c, struct vimg_error *err)
{
    struct iscsi_context *ctx;
    enum iscsi_header_digest digest = ISCSI_HEADER_DIGEST_NONE_CRC32C;

    ctx = iscsi_create_context(c->initiator_name ? c->initiator_name : ISCSI_DEFAULT_INITIATOR);
    if (!ctx) {
        vimg_error_set(err, ENOMEM, "iSCSI: Could not create iSCSI context.");
        return NULL;
    }
    for (int i = 0; c->header_digest && iscsi_digests[i]; i++)
        if (strcmp(c->header_digest, iscsi_digests[i]) == 0)
            digest = iscsi_digest_values[i];
    if ((strcmp(c->transport, "iser") == 0 && iscsi_init_transport(ctx, ISER_TRANSPORT) < 0) ||
        iscsi_set_targetname(ctx, c->target) < 0 ||
        iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL) < 0 ||
        iscsi_set_header_digest(ctx, digest) < 0 ||
        (c->user && iscsi_set_initiator_username_pwd(ctx, c->user, c->password) < 0)) {
        vimg_error_set(err, EINVAL, "iSCSI: %s", iscsi_get_error(ctx));
        iscsi_destroy_context(ctx);
        return NULL;
    }
    iscsi_set_timeout(ctx, (int)(c->timeout > INT32_MAX ? INT32_MAX : c->timeout));
    /* A target that went away fails requests instead of being retried forever. */
    iscsi_set_reconnect_max_retries(ctx, ISCSI_RECONNECTS);
    return ctx;
}

/* errno for a CHECK CONDITION, as qemu-img reports each sense. */
static int
iscsi_sense_errno(const struct scsi_sense *sense)
{
    switch (sense->key) {
    case SCSI_SENSE_ILLEGAL_REQUEST:
        switch (sense->ascq) {
        case SCSI_SENSE_ASCQ_PARAMETER_LIST_LENGTH_ERROR:
        case SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE:
        case SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB:
        case SCSI_SENSE_ASCQ_INVALID_FIELD_IN_PARAMETER_LIST:
            return EINVAL;
        case SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE:
            return ENOSPC;
        case SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED:
            return ENOTSUP;
        case SCSI_SENSE_ASCQ_WRITE_PROTECTED:
            return EPERM;
        default:
            return EIO;
        }
    case SCSI_SENSE_DATA_PROTECTION:
        return EACCES;
    case SCSI_SENSE_COMMAND_ABORTED:
        return ECANCELED;
    default:
        return EIO;
    }
}

/* The LUN does not implement this (optional) command or one of its fields. */
static bool
iscsi_is_unsupported(const struct iscsi_req *req)
{
    return req->status == SCSI_STATUS_CHECK_CONDITION && req->task &&
           req->task->sense.key == SCSI_SENSE_ILLEGAL_REQUEST &&
           (req->task->sense.ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
            req->task->sense.ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB);
}

static bool
iscsi_should_retry(const struct iscsi_req *req)
{
    if (req->status == SCSI_STATUS_BUSY || req->status == SCSI_STATUS_TASK_SET_FULL)
        return true;
    return req->status == SCSI_STATUS_CHECK_CONDITION && req->task &&
           req->task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
}

/* Runs in the event thread, under s->lock, from iscsi_service (or iscsi_destroy_context). */
static void
iscsi_req_done(struct iscsi_context *ctx, int status, void *command_data, void *private_data)
{
    struct iscsi_req *req = private_data;

    if (req->is_abandoned) {
        /* Its caller has gone (the session was given up); teardown frees req. */
        if (command_data)
            scsi_free_scsi_task(command_data);
        req->is_done = true;
        return;
    }
    req->task = command_data;
    req->status = status;
    if (status != SCSI_STATUS_GOOD) {
        const char *e = iscsi_get_error(ctx);
        snprintf(req->msg, sizeof(req->msg), "%s", e ? e : "unknown error");
    }
    if (status == SCSI_STATUS_CHECK_CONDITION && req->task)
        snprintf(req->msg, sizeof(req->msg), "SENSE KEY:%s(%d) ASCQ:%s(0x%04x)",
                 scsi_sense_key_str(req->task->sense.key) ?
                 scsi_sense_key_str(req->task->sense.key) : "(null)",
                 req->task->sense.key,
                 scsi_sense_ascq_str(req->task->sense.ascq) ?
                 scsi_sense_ascq_str(req->task->sense.ascq) : "(null)",
                 req->task->sense.ascq);
    req->is_done = true;
    pthread_cond_signal(&req->cond);
}

static struct scsi_task *
iscsi_task_new(struct iscsi_state *s, struct iscsi_req *req)
{
    struct iscsi_context *ctx = s->ctx;
    uint32_t len = req->n_blocks * s->block_size;

    switch (req->op) {
    case ISCSI_OP_READ:
        if (s->is_rom)
            return iscsi_read10_iov_task(ctx, s->lun, (uint32_t)req->lba, len, (int)s->block_size,
                                         0, 0, 0, 0, 0, iscsi_req_done, req, req->iov,
                                         req->n_iov);
        return iscsi_read16_iov_task(ctx, s->lun, req->lba, len, (int)s->block_size, 0, 0, 0, 0,
                                     0, iscsi_req_done, req, req->iov, req->n_iov);
    case ISCSI_OP_WRITE:
        if (s->is_rom)
            return iscsi_write10_iov_task(ctx, s->lun, (uint32_t)req->lba, NULL, len,
                                          (int)s->block_size, 0, 0, req->is_fua, 0, 0,
                                          iscsi_req_done, req, req->iov, req->n_iov);
        return iscsi_write16_iov_task(ctx, s->lun, req->lba, NULL, len, (int)s->block_size, 0, 0,
                                      req->is_fua, 0, 0, iscsi_req_done, req, req->iov,
                                      req->n_iov);
    case ISCSI_OP_WRITE_SAME:
        return iscsi_writesame16_task(ctx, s->lun, req->lba, req->block, s->block_size,
                                      req->n_blocks, 0, req->is_unmap, 0, 0, iscsi_req_done, req);
    case ISCSI_OP_UNMAP:
        return iscsi_unmap_task(ctx, s->lun, 0, 0, &req->range, 1, iscsi_req_done, req);
    case ISCSI_OP_LBA_STATUS:
        return iscsi_get_lba_status_task(ctx, s->lun, req->lba, 8 + 16, iscsi_req_done, req);
    case ISCSI_OP_SYNC10:
        return iscsi_synchronizecache10_task(ctx, s->lun, 0, 0, 0, 0, iscsi_req_done, req);
    case ISCSI_OP_SYNC16:
        return iscsi_synchronizecache16_task(ctx, s->lun, 0, 0, 0, 0, iscsi_req_done, req);
    }
    return NULL;
}

static void
iscsi_wake(struct iscsi_state *s)
{
    uint64_t one = 1;

    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: the event thread has a wake-up pending anyway. */
    }
}

static void
iscsi_req_unlink(struct iscsi_state *s, struct iscsi_req *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else
        s->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->next = req->prev = NULL;
}

/* Queues req's command; called with s->lock held. -errno with req->msg saying why. */
static int
iscsi_req_submit(struct iscsi_state *s, struct iscsi_req *req)
{
    if (s->is_dead) {
        snprintf(req->msg, sizeof(req->msg), "%s", s->dead_msg);
        return -EIO;
    }
    req->is_done = false;
    req->task = NULL;
    if (!iscsi_task_new(s, req)) {
        snprintf(req->msg, sizeof(req->msg), "%s", iscsi_get_error(s->ctx));
        return -ENOMEM;
    }
    iscsi_wake(s);
    return 0;
}

/*
 * Waits for a submitted req, sending it again when the target asks for a
 * retry. Returns 0 (req->task holds the reply) or -errno with req->msg
 * saying why; -ENOSYS: the LUN lacks this optional command. Called with
 * s->lock held.
 */
static int
iscsi_req_wait(struct iscsi_state *s, struct iscsi_req *req)
{
    for (int attempt = 0;; attempt++) {
        int ret;
        while (!req->is_done && !s->is_dead)
            pthread_cond_wait(&req->cond, &s->lock);
        if (!req->is_done) {
            /* The session is gone and libiscsi still owns the task: leave req to it. */
            req->is_abandoned = true;
            snprintf(req->msg, sizeof(req->msg), "%s", s->dead_msg);
            return -EIO;
        }
        if (req->status == SCSI_STATUS_GOOD)
            return 0;
        if (attempt < ISCSI_MAX_RETRIES && iscsi_should_retry(req)) {
            scsi_free_scsi_task(req->task);
            req->task = NULL;
            if ((ret = iscsi_req_submit(s, req)) < 0)
                return ret;
            continue;
        }
        if (req->op != ISCSI_OP_READ && req->op != ISCSI_OP_WRITE && iscsi_is_unsupported(req))
            return -ENOSYS;
        if (req->status == SCSI_STATUS_CHECK_CONDITION && req->task)
            return -iscsi_sense_errno(&req->task->sense);
        return req->status == SCSI_STATUS_TIMEOUT ? -ETIMEDOUT : -EIO;
    }
}

static int
iscsi_req_run(struct iscsi_state *s, struct iscsi_req *req)
{
    int ret = iscsi_req_submit(s, req);

    return ret < 0 ? ret : iscsi_req_wait(s, req);
}

static struct iscsi_req *
iscsi_req_new(struct iscsi_state *s, enum iscsi_op op, uint64_t lba, uint32_t n_blocks)
{
    struct iscsi_req *req = calloc(1, sizeof(*req));

    if (!req)
        return NULL;
    pthread_cond_init(&req->cond, NULL);
    req->op = op;
    req->lba = lba;
    req->n_blocks = n_blocks;
    pthread_mutex_lock(&s->lock);
    req->next = s->reqs;
    if (s->reqs)
        s->reqs->prev = req;
    s->reqs = req;
    pthread_mutex_unlock(&s->lock);
    return req;
}

static void
iscsi_req_free_locked(struct iscsi_state *s, struct iscsi_req *req)
{
    iscsi_req_unlink(s, req);
    if (req->task)
        scsi_free_scsi_task(req->task);
    pthread_cond_destroy(&req->cond);
    free(req->iov);
    free(req->block);
    free(req);
}

/* Submits and waits; releases req unless libiscsi still holds it. */
static int
iscsi_req_finish(struct iscsi_state *s, struct iscsi_req *req, void (*use)(struct iscsi_req *,
                 void *), void *opaque, char *msg, size_t msg_size)
{
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = iscsi_req_run(s, req);
    if (ret == 0 && use)
        use(req, opaque);
    snprintf(msg, msg_size, "%s", req->msg);
    if (!req->is_abandoned)
        iscsi_req_free_locked(s, req);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* An I/O failure, told as qemu-img tells it, with errno's words as the error. */
static int
iscsi_io_error(int ret, const char *what, uint64_t lba, const char *msg,
               struct vimg_error *err)
{
    if (lba == UINT64_MAX)
        vimg_warn("iSCSI %s failed: %s", what, msg);
    else
        vimg_warn("iSCSI %s failed at lba %" PRIu64 ": %s", what, lba, msg);
    return vimg_error_set(err, -ret, "%s", strerror(-ret));
}

static void *
iscsi_event_loop(void *opaque)
{
    struct iscsi_state *s = opaque;
    int failures = 0;

    pthread_mutex_lock(&s->lock);
    while (!s->is_stopping && !s->is_dead) {
        int events = iscsi_which_events(s->ctx);
        struct pollfd pfd[2] = {
            { .fd = events ? iscsi_get_fd(s->ctx) : -1, .events = (short)events },
            { .fd = s->wake_fd, .events = POLLIN },
        };
        uint64_t n;
        pthread_mutex_unlock(&s->lock);
        /* which_events == 0: libiscsi waits between reconnects; come back soon. */
        if (poll(pfd, 2, events ? ISCSI_POLL_MS : 100) > 0 && (pfd[1].revents & POLLIN) &&
            read(s->wake_fd, &n, sizeof(n)) < 0) {
            /* Nothing was pending after all. */
        }
        pthread_mutex_lock(&s->lock);
        if (iscsi_service(s->ctx, pfd[0].fd >= 0 ? pfd[0].revents : 0) < 0)
            failures++;
        else if (iscsi_is_logged_in(s->ctx))
            failures = 0;
        /* libiscsi gives up after ISCSI_RECONNECTS; it then only reports errors. */
        if (failures > 2 * ISCSI_RECONNECTS + 2) {
            snprintf(s->dead_msg, sizeof(s->dead_msg), "%s", iscsi_get_error(s->ctx));
            s->is_dead = true;
            for (struct iscsi_req *r = s->reqs; r; r = r->next)
                pthread_cond_signal(&r->cond);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Standard INQUIRY: the peripheral device type. */
static int
iscsi_inquire_type(struct iscsi_state *s, struct vimg_error *err)
{
    struct scsi_task *task = iscsi_inquiry_sync(s->ctx, s->lun, 0, 0, 64);
    struct scsi_inquiry_standard *inq;

    if (!task || task->status != SCSI_STATUS_GOOD ||
        !(inq = scsi_datain_unmarshall(task))) {
        if (task)
            scsi_free_scsi_task(task);
        return vimg_error_set(err, EIO, "iSCSI: failed to send inquiry command: %s",
                              iscsi_get_error(s->ctx));
    }
    s->type = (int)inq->device_type;
    scsi_free_scsi_task(task);
    return 0;
}

static int
iscsi_read_capacity(struct iscsi_state *s, struct vimg_error *err)
{
    struct scsi_task *task;
    int ret = 0;

    s->block_size = 512;
    if (s->type != ISCSI_TYPE_DISK && s->type != ISCSI_TYPE_ROM)
        return 0;
    task = s->is_rom ? iscsi_readcapacity10_sync(s->ctx, s->lun, 0, 0)
                     : iscsi_readcapacity16_sync(s->ctx, s->lun);
    if (!task || task->status != SCSI_STATUS_GOOD) {
        ret = vimg_error_set(err, EIO, "iSCSI: failed to send readcapacity10/16 command");
    } else if (s->is_rom) {
        struct scsi_readcapacity10 *rc10 = scsi_datain_unmarshall(task);
        if (!rc10)
            ret = vimg_error_set(err, EIO, "iSCSI: Failed to unmarshall readcapacity10 data.");
        else {
            s->block_size = rc10->block_size;
            s->n_blocks = (uint64_t)rc10->lba + 1;
        }
    } else {
        struct scsi_readcapacity16 *rc16 = scsi_datain_unmarshall(task);
        if (!rc16)
            ret = vimg_error_set(err, EIO, "iSCSI: Failed to unmarshall readcapacity16 data.");
        else {
            s->block_size = rc16->block_length;
            s->n_blocks = rc16->returned_lba + 1;
            s->lbpme = rc16->lbpme;
            s->lbprz = rc16->lbprz;
        }
    }
    if (task)
        scsi_free_scsi_task(task);
    if (ret == 0 && (s->block_size < 512 || s->block_size > 65536 ||
                     (s->block_size & (s->block_size - 1))))
        ret = vimg_error_set(err, EIO, "iSCSI: the LUN's block size (%" PRIu32 ") is not "
                             "supported", s->block_size);
    if (ret == 0 && s->n_blocks > INT64_MAX / s->block_size)
        ret = vimg_error_set(err, EIO, "iSCSI: the LUN's capacity (%" PRIu64 " blocks) is too "
                             "large", s->n_blocks);
    return ret;
}

/* The VPD pages (Block Limits, Logical Block Provisioning) of a disk LUN, if it has them. */
static void
iscsi_read_vpd(struct iscsi_state *s)
{
    struct scsi_task *task = iscsi_inquiry_sync(s->ctx, s->lun, 1, 0x00, 255);
    struct scsi_inquiry_supported_pages *pages;
    bool has_bl = false, has_lbp = false;

    if (task && task->status == SCSI_STATUS_GOOD && (pages = scsi_datain_unmarshall(task))) {
        for (int i = 0; i < pages->num_pages; i++) {
            has_bl |= pages->pages[i] == SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS;
            has_lbp |= pages->pages[i] == SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING;
        }
    }
    if (task)
        scsi_free_scsi_task(task);
    if (has_lbp && (task = iscsi_inquiry_sync(s->ctx, s->lun, 1, 0xb2, 64))) {
        struct scsi_inquiry_logical_block_provisioning *lbp;
        if (task->status == SCSI_STATUS_GOOD && (lbp = scsi_datain_unmarshall(task))) {
            s->lbpu = lbp->lbpu;
            s->lbpws = lbp->lbpws;
        }
        scsi_free_scsi_task(task);
    }
    if (has_bl && (task = iscsi_inquiry_sync(s->ctx, s->lun, 1, 0xb0, 64))) {
        struct scsi_inquiry_block_limits *bl;
        if (task->status == SCSI_STATUS_GOOD && (bl = scsi_datain_unmarshall(task))) {
            s->max_ws_blocks = bl->max_ws_len > UINT32_MAX ? UINT32_MAX
                                                            : (uint32_t)bl->max_ws_len;
            s->max_unmap_blocks = bl->max_unmap;
            s->max_xfer_blocks = bl->max_xfer_len;
        }
        scsi_free_scsi_task(task);
    }
    if (!s->lbpme)
        s->lbpu = s->lbpws = false;
}

/* The transfer limit from Block Limits, in bytes. */
static uint64_t
iscsi_max_transfer(const struct iscsi_state *s)
{
    uint64_t max = ISCSI_MAX_TRANSFER;

    if (s->max_xfer_blocks && (uint64_t)s->max_xfer_blocks * s->block_size < max)
        max = (uint64_t)s->max_xfer_blocks * s->block_size;
    max -= max % s->block_size;
    return max ? max : s->block_size;
}

/* MODE SENSE(6): write protection and FUA support; a failure is only a warning. */
static void
iscsi_mode_sense(struct iscsi_state *s, bool *is_write_protected)
{
    struct scsi_task *task = iscsi_modesense6_sync(s->ctx, s->lun, 0, SCSI_MODESENSE_PC_CURRENT,
                                                   SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255);
    struct scsi_mode_sense *ms;

    *is_write_protected = false;
    if (!task || task->status != SCSI_STATUS_GOOD || !(ms = scsi_datain_unmarshall(task))) {
        vimg_warn("iSCSI: Failed MODE_SENSE(6), LUN assumed writable");
    } else {
        *is_write_protected = ms->device_specific_parameter & ISCSI_MODE_WP;
        s->can_fua = ms->device_specific_parameter & ISCSI_MODE_DPOFUA;
    }
    if (task)
        scsi_free_scsi_task(task);
}

static int
iscsi_probe_lun(struct vimg_node *node, unsigned flags, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    bool is_write_protected;
    int ret;

    if ((ret = iscsi_inquire_type(s, err)) < 0)
        return ret;
    s->is_rom = s->type == ISCSI_TYPE_ROM;
    if ((ret = iscsi_read_capacity(s, err)) < 0)
        return ret;
    if (s->type == ISCSI_TYPE_DISK)
        iscsi_read_vpd(s);
    iscsi_mode_sense(s, &is_write_protected);
    if (is_write_protected && (flags & VIMG_OPEN_RDWR))
        return vimg_error_set(err, EACCES, "LUN is write protected");
    node->request_alignment = s->block_size;
    node->max_transfer = iscsi_max_transfer(s);
    return 0;
}

static void
iscsi_teardown(struct iscsi_state *s)
{
    if (s->has_thread) {
        pthread_mutex_lock(&s->lock);
        s->is_stopping = true;
        pthread_mutex_unlock(&s->lock);
        iscsi_wake(s);
        pthread_join(s->thread, NULL);
        s->has_thread = false;
    }
    if (s->ctx) {
        pthread_mutex_lock(&s->lock);
        /* Leave politely; a lost session just goes. */
        if (!s->is_dead && iscsi_is_logged_in(s->ctx)) {
            iscsi_set_timeout(s->ctx, 2);
            iscsi_logout_sync(s->ctx);
        }
        /* Abandoned requests get their callback (CANCELLED) here, or never. */
        for (struct iscsi_req *r = s->reqs; r; r = r->next)
            r->is_abandoned = true;
        iscsi_destroy_context(s->ctx);
        s->ctx = NULL;
        while (s->reqs) {
            struct iscsi_req *r = s->reqs;
            r->task = NULL;     /* freed by iscsi_req_done, or never returned */
            iscsi_req_free_locked(s, r);
        }
        pthread_mutex_unlock(&s->lock);
    }
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    s->wake_fd = -1;
    pthread_mutex_destroy(&s->lock);
}

static int
iscsi_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
           struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    struct iscsi_settings c = { 0 };
    int ret;

    pthread_mutex_init(&s->lock, NULL);
    s->wake_fd = -1;
    if ((ret = iscsi_gather_settings(node, opts, &c, err)) < 0)
        goto fail;
    s->lun = (int)c.lun_number;
    if (!(s->ctx = iscsi_new_context(&c, err))) {
        ret = -err->errnum;
        goto fail;
    }
    if (iscsi_full_connect_sync(s->ctx, c.portal, s->lun) != 0) {
        ret = vimg_error_set(err, EIO, "iSCSI: Failed to connect to LUN : %s",
                             iscsi_get_error(s->ctx));
        goto fail;
    }
    if ((ret = iscsi_probe_lun(node, flags, err)) < 0)
        goto fail;
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        ret = vimg_error_set(err, errno, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if ((ret = -pthread_create(&s->thread, NULL, iscsi_event_loop, s)) < 0) {
        vimg_error_set(err, -ret, "Could not start the iSCSI event thread: %s", strerror(-ret));
        goto fail;
    }
    s->has_thread = true;
    s->is_writable = flags & VIMG_OPEN_RDWR;
    iscsi_settings_free(&c);
    return 0;
fail:
    iscsi_settings_free(&c);
    iscsi_teardown(s);
    return ret;
}

static int iscsi_flush(struct vimg_node *node, struct vimg_error *err);

/* Like qemu-img, a writable LUN's cache is flushed at close; a failure is only told. */
static void
iscsi_close(struct vimg_node *node)
{
    struct iscsi_state *s = node->state;
    struct vimg_error err = { 0 };

    /* Not with cache=unsafe (convert's default target mode), as qemu-img. */
    if (s->is_writable && !s->is_dead && !(node->open_flags & VIMG_OPEN_NO_FLUSH))
        iscsi_flush(node, &err);
    iscsi_teardown(s);
}

static int64_t
iscsi_length(struct vimg_node *node, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;

    (void)err;
    return (int64_t)(s->n_blocks * s->block_size);
}

/* The request for [done, +len) of a read or write; NULL without memory. */
static struct iscsi_req *
iscsi_req_new_rw(struct iscsi_state *s, enum iscsi_op op, uint64_t offset, uint64_t done,
                 uint64_t len, const struct iovec *iov, int n_iov, unsigned flags)
{
    struct iscsi_req *req = iscsi_req_new(s, op, (offset + done) / s->block_size,
                                          (uint32_t)(len / s->block_size));
    struct iovec *slice;
    int n_slice;

    if (!req)
        return NULL;
    req->is_fua = (flags & VIMG_REQ_FUA) && s->can_fua;
    if (vimg_iov_slice(iov, n_iov, done, len, &slice, &n_slice) == 0) {
        req->iov = calloc((size_t)n_slice, sizeof(*req->iov));
        for (int i = 0; req->iov && i < n_slice; i++) {
            req->iov[i].iov_base = slice[i].iov_base;
            req->iov[i].iov_len = slice[i].iov_len;
        }
        req->n_iov = n_slice;
        free(slice);
    }
    if (!req->iov) {
        pthread_mutex_lock(&s->lock);
        iscsi_req_free_locked(s, req);
        pthread_mutex_unlock(&s->lock);
        return NULL;
    }
    return req;
}

/*
 * Sends the n requests at once and waits for all that went out (libiscsi
 * fills the caller's buffers until then). Returns 0, or -errno with *bad the
 * first request that failed; frees what libiscsi no longer holds.
 */
static int
iscsi_req_run_all(struct iscsi_state *s, struct iscsi_req **reqs, int n, int *bad,
                  char *msg, size_t msg_size)
{
    int n_submitted = 0, ret = 0;

    pthread_mutex_lock(&s->lock);
    for (; n_submitted < n && ret == 0; n_submitted++)
        if ((ret = iscsi_req_submit(s, reqs[n_submitted])) < 0)
            *bad = n_submitted;
    for (int i = 0; i < n_submitted; i++) {
        int r = iscsi_req_wait(s, reqs[i]);
        if (r < 0 && ret == 0) {
            ret = r;
            *bad = i;
        }
    }
    if (ret < 0)
        snprintf(msg, msg_size, "%s", reqs[*bad]->msg);
    for (int i = 0; i < n; i++)
        if (!reqs[i]->is_abandoned)
            iscsi_req_free_locked(s, reqs[i]);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Reads or writes [offset, +bytes) as pieces of ISCSI_PIECE bytes (more when
 * that would make over ISCSI_MAX_PIECES), all in flight at once: the target
 * works on them in parallel even when the caller has only this one request.
 */
static int
iscsi_rw(struct vimg_node *node, enum iscsi_op op, uint64_t offset, uint64_t bytes,
         const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    struct iscsi_req *reqs[ISCSI_MAX_PIECES];
    uint64_t piece = ISCSI_PIECE < s->block_size ? s->block_size : ISCSI_PIECE, done;
    int n = 0, bad = 0, ret;
    char msg[256];

    if (offset % s->block_size || bytes % s->block_size || bytes > UINT32_MAX)
        return vimg_error_set(err, EINVAL, "iSCSI: request at 0x%" PRIx64 " (+%" PRIu64
                              ") is not aligned to the block size (%" PRIu32 ")",
                              offset, bytes, s->block_size);
    while (bytes / piece >= ISCSI_MAX_PIECES)
        piece *= 2;
    for (done = 0; done < bytes; done += piece, n++) {
        uint64_t len = bytes - done < piece ? bytes - done : piece;
        if (!(reqs[n] = iscsi_req_new_rw(s, op, offset, done, len, iov, n_iov, flags))) {
            pthread_mutex_lock(&s->lock);
            while (n > 0)
                iscsi_req_free_locked(s, reqs[--n]);
            pthread_mutex_unlock(&s->lock);
            return vimg_error_set(err, ENOMEM, "Out of memory");
        }
    }
    ret = n ? iscsi_req_run_all(s, reqs, n, &bad, msg, sizeof(msg)) : 0;
    if (ret < 0)
        return iscsi_io_error(ret, op == ISCSI_OP_READ ? "READ10/16" : "WRITE10/16",
                              (offset + (uint64_t)bad * piece) / s->block_size, msg, err);
    return 0;
}

static int
iscsi_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    return iscsi_rw(node, ISCSI_OP_READ, offset, bytes, iov, n_iov, flags, err);
}

static int
iscsi_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
              int n_iov, unsigned flags, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    int ret = iscsi_rw(node, ISCSI_OP_WRITE, offset, bytes, iov, n_iov, flags, err);

    /* Without FUA on the wire, a cache flush gives the same guarantee. */
    if (ret == 0 && (flags & VIMG_REQ_FUA) && !s->can_fua)
        ret = iscsi_flush(node, err);
    return ret;
}

/* Runs a command with no data; a command the LUN lacks returns -ENOSYS quietly. */
static int
iscsi_simple(struct iscsi_state *s, struct iscsi_req *req, const char *what,
             struct vimg_error *err)
{
    /* Flushes name no LBA; req is gone after iscsi_req_finish. */
    uint64_t lba = req->op == ISCSI_OP_UNMAP ? req->range.lba :
                   req->op == ISCSI_OP_SYNC10 || req->op == ISCSI_OP_SYNC16 ? UINT64_MAX :
                   req->lba;
    char msg[256];
    int ret = iscsi_req_finish(s, req, NULL, NULL, msg, sizeof(msg));

    if (ret == -ENOSYS)
        return vimg_error_set(err, ENOSYS, "%s", strerror(ENOTSUP));
    if (ret < 0)
        return iscsi_io_error(ret, what, lba, msg, err);
    return 0;
}

static uint64_t
iscsi_chunk_blocks(uint64_t n_blocks, uint32_t limit, uint32_t block_size)
{
    uint64_t max = ISCSI_MAX_RANGE / block_size;

    if (limit && limit < max)
        max = limit;
    return n_blocks < max ? n_blocks : max;
}

/*
 * WRITE SAME(16) of a zero block, with UNMAP when the caller allows it and
 * the LUN both supports it and reads unmapped blocks as zeros.
 */
static int
iscsi_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                    struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    bool is_unmap = (flags & VIMG_REQ_MAY_UNMAP) && s->lbpws && s->lbprz;
    uint64_t lba = offset / s->block_size, n_blocks = bytes / s->block_size;
    int ret = 0;

    if (s->no_write_same || s->is_rom || ((flags & VIMG_REQ_NO_FALLBACK) && !is_unmap))
        return vimg_error_set(err, ENOTSUP, "%s", strerror(ENOTSUP));
    if (offset % s->block_size || bytes % s->block_size)
        return vimg_error_set(err, ENOTSUP, "%s", strerror(ENOTSUP));
    while (n_blocks && ret == 0) {
        uint64_t n = iscsi_chunk_blocks(n_blocks, s->max_ws_blocks, s->block_size);
        struct iscsi_req *req = iscsi_req_new(s, ISCSI_OP_WRITE_SAME, lba, (uint32_t)n);
        if (!req || !(req->block = calloc(1, s->block_size))) {
            if (req) {
                pthread_mutex_lock(&s->lock);
                iscsi_req_free_locked(s, req);
                pthread_mutex_unlock(&s->lock);
            }
            return vimg_error_set(err, ENOMEM, "Out of memory");
        }
        req->is_unmap = is_unmap;
        ret = iscsi_simple(s, req, "WRITESAME10/16", err);
        lba += n;
        n_blocks -= n;
    }
    if (ret == -ENOSYS) {
        /* No WRITE SAME(16) here: the core writes zeros itself from now on. */
        s->no_write_same = true;
        return vimg_error_set(err, ENOTSUP, "%s", strerror(ENOTSUP));
    }
    if (ret == 0 && (flags & VIMG_REQ_FUA))
        ret = iscsi_flush(node, err);
    return ret;
}

static int
iscsi_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    uint64_t lba, end, n_blocks;
    int ret = 0;

    if (!s->lbpu)
        return 0;
    /* Only whole blocks can be unmapped; the partial ends stay as they are. */
    lba = (offset + s->block_size - 1) / s->block_size;
    end = (offset + bytes) / s->block_size;
    n_blocks = end > lba ? end - lba : 0;
    while (n_blocks && ret == 0) {
        uint64_t n = iscsi_chunk_blocks(n_blocks, s->max_unmap_blocks, s->block_size);
        struct iscsi_req *req = iscsi_req_new(s, ISCSI_OP_UNMAP, lba, (uint32_t)n);
        if (!req)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        req->range.lba = lba;
        req->range.num = (uint32_t)n;
        ret = iscsi_simple(s, req, "UNMAP", err);
        lba += n;
        n_blocks -= n;
    }
    if (ret == -ENOSYS) {
        s->lbpu = false;
        return 0;
    }
    return ret;
}

/* SYNCHRONIZE CACHE(10) from LBA 0 for 0 blocks covers the whole LUN; (16) if (10) is missing. */
static int
iscsi_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    struct iscsi_req *req;
    int ret;

    for (;;) {
        bool is_16 = s->no_sync10;
        req = iscsi_req_new(s, is_16 ? ISCSI_OP_SYNC16 : ISCSI_OP_SYNC10, 0, 0);
        if (!req)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        ret = iscsi_simple(s, req, is_16 ? "SYNCHRONIZECACHE16" : "SYNCHRONIZECACHE10", err);
        if (ret == -ENOSYS && (is_16 || s->is_rom)) {
            /* No SYNCHRONIZE CACHE at all: the LUN has no cache to write back. */
            vimg_error_clear(err);
            return 0;
        }
        if (ret != -ENOSYS)
            return ret;
        s->no_sync10 = true;
    }
}

struct iscsi_extent {
    uint64_t lba;
    uint64_t n_blocks;
    enum scsi_provisioning_type provisioning;
    bool is_set;
};

static void
iscsi_extent_capture(struct iscsi_req *req, void *opaque)
{
    struct iscsi_extent *e = opaque;
    struct scsi_get_lba_status *st = scsi_datain_unmarshall(req->task);

    if (!st || st->num_descriptors == 0)
        return;
    e->lba = st->descriptors[0].lba;
    e->n_blocks = st->descriptors[0].num_blocks;
    e->provisioning = st->descriptors[0].provisioning;
    e->is_set = true;
}

/* GET LBA STATUS where the LUN is thin provisioned; otherwise everything is data. */
static int
iscsi_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   struct vimg_block_status *bs, struct vimg_error *err)
{
    struct iscsi_state *s = node->state;
    struct iscsi_extent e = { 0 };
    struct iscsi_req *req;
    uint64_t lba = offset / s->block_size, run;
    char msg[256];
    int ret;

    bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
    bs->bytes = bytes;
    bs->offset = offset;
    bs->file = node;
    if (!s->lbpme || s->no_lba_status || offset % s->block_size)
        return 0;
    if (!(req = iscsi_req_new(s, ISCSI_OP_LBA_STATUS, lba, 0)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = iscsi_req_finish(s, req, iscsi_extent_capture, &e, msg, sizeof(msg));
    if (ret == -ENOSYS) {
        s->no_lba_status = true;
        return 0;
    }
    if (ret < 0)
        return iscsi_io_error(ret, "GET_LBA_STATUS", lba, msg, err);
    /* A descriptor must cover the LBA asked about; anything else is not trusted. */
    if (!e.is_set || e.lba > lba || e.lba + e.n_blocks <= lba)
        return 0;
    run = (e.lba + e.n_blocks - lba) * s->block_size;
    if (run < bs->bytes)
        bs->bytes = run;
    if (e.provisioning != SCSI_PROVISIONING_TYPE_MAPPED) {
        bs->flags &= ~VIMG_BS_DATA;
        if (s->lbprz)
            bs->flags |= VIMG_BS_ZERO;
    }
    return 0;
}

/* A LUN keeps its size: only "resizing" to it, or to less when inexact, succeeds. */
static int
iscsi_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
               struct vimg_error *err)
{
    int64_t len = iscsi_length(node, err);

    if (prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode '%s'",
                              vimg_prealloc_name(prealloc));
    if (is_exact && size != (uint64_t)len)
        return vimg_error_set(err, ENOTSUP, "Cannot resize iSCSI devices");
    if (size > (uint64_t)len)
        return vimg_error_set(err, EINVAL, "Cannot grow iSCSI devices");
    return 0;
}

static const struct vimg_opt_desc iscsi_create_opts[] = {
    { "preallocation", VIMG_OPT_STRING, "Preallocation mode (allowed values: off)", NULL },
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

/*
 * "Creating" on a LUN, as qemu-img does for protocols without their own
 * create: open it, check the size fits, and clear the first sector so that
 * no old header is probed later.
 */
static int
iscsi_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct vimg_node *node;
    const char *mode = vimg_opts_get(opts, "preallocation");
    uint8_t *zeros;
    uint64_t size;
    int prealloc = VIMG_PREALLOC_OFF, ret;

    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0)
        return ret;
    if (mode && (ret = vimg_prealloc_parse(mode, &prealloc, err)) < 0)
        return ret;
    ret = vimg_open(&node, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0) {
        vimg_error_prefix(err, "Protocol driver 'iscsi' does not support image creation, and "
                          "opening the image failed: ");
        return ret;
    }
    ret = iscsi_truncate(node, size, false, prealloc, err);
    if (ret == 0 && size > 0) {
        /* One whole block: the LUN takes nothing smaller. */
        zeros = calloc(1, node->request_alignment);
        if (!zeros)
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        else if ((ret = vimg_node_pwrite(node, 0, zeros, node->request_alignment, 0, err)) < 0)
            vimg_error_prefix(err, "Failed to clear the new image's first sector: ");
        free(zeros);
    }
    vimg_close(node);
    return ret;
}

const struct vimg_driver vimg_iscsi_driver = {
    .name = "iscsi",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct iscsi_state),
    .protocols = iscsi_protocols,
    .open = iscsi_open,
    .close = iscsi_close,
    .create_opts = iscsi_create_opts,
    .create = iscsi_create,
    .preadv = iscsi_preadv,
    .pwritev = iscsi_pwritev,
    .pwrite_zeroes = iscsi_pwrite_zeroes,
    .discard = iscsi_discard,
    .flush = iscsi_flush,
    .block_status = iscsi_block_status,
    .length = iscsi_length,
    .truncate = iscsi_truncate,
};
