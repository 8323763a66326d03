/*
 * The vimg-io command interpreter: qemu-io's command table and help texts,
 * splitting a line into words, argument-count checks and dispatch.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

static const char help_aio_read[] =
    " asynchronously reads a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " The read is performed asynchronously and the aio_flush command must be\n"
    " used to ensure all outstanding aio requests have been completed.\n"
    " Note that due to its asynchronous nature, this command will be\n"
    " considered successful once the request is submitted, independently\n"
    " of potential I/O errors or pattern mismatches.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -P, -- use a pattern to verify read data\n"
    " -i, -- treat request as invalid, for exercising stats\n"
    " -v, -- dump buffer to standard output\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

static const char help_aio_write[] =
    " asynchronously writes a range of bytes from the given offset source\n"
    " from multiple buffers\n"
    "\n"
    " Example:\n"
    " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " The write is performed asynchronously and the aio_flush command must be\n"
    " used to ensure all outstanding aio requests have been completed.\n"
    " Note that due to its asynchronous nature, this command will be\n"
    " considered successful once the request is submitted, independently\n"
    " of potential I/O errors or pattern mismatches.\n"
    " -P, -- use different pattern to fill file\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -i, -- treat request as invalid, for exercising stats\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
    "\n";

static const char help_discard[] =
    " discards a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
    "\n"
    " Discards a segment of the currently open file.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

static const char help_open[] =
    " opens a new file in the requested mode\n"
    "\n"
    " Example:\n"
    " 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
    "\n"
    " Opens a file for subsequent use by all of the other qemu-io commands.\n"
    " -r, -- open file read-only\n"
    " -s, -- use snapshot file\n"
    " -C, -- use copy-on-read\n"
    " -n, -- disable host cache, short for -t none\n"
    " -U, -- force shared permissions\n"
    " -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
    " -i, -- use AIO mode (threads, native or io_uring)\n"
    " -t, -- use the given cache mode for the image\n"
    " -d, -- use the given discard mode for the image\n"
    " -o, -- options to be given to the block driver\n";

static const char help_read[] =
    " reads a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " -b, -- read from the VM state rather than the virtual disk\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -l, -- length for pattern verification (only with -P)\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- use a pattern to verify read data\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -s, -- start offset for pattern verification (only with -P)\n"
    " -v, -- dump buffer to standard output\n"
    "\n";

static const char help_readv[] =
    " reads a range of bytes from the given offset into multiple buffers\n"
    "\n"
    " Example:\n"
    " 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
    "\n"
    " Reads a segment of the currently open file, optionally dumping it to the\n"
    " standard output stream (with -v option) for subsequent inspection.\n"
    " Uses multiple iovec buffers if more than one byte range is specified.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -P, -- use a pattern to verify read data\n"
    " -v, -- dump buffer to standard output\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

static const char help_reopen[] =
    " Changes the open options of an already opened image\n"
    "\n"
    " Example:\n"
    " 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image\n"
    "\n"
    " -r, -- Reopen the image read-only\n"
    " -w, -- Reopen the image read-write\n"
    " -c, -- Change the cache mode to the given value\n"
    " -o, -- Changes block driver options (cf. 'open' command)\n"
    "\n";

static const char help_sigraise[] =
    " raises the given signal\n"
    "\n"
    " Example:\n"
    " 'sigraise 15' - raises SIGTERM\n"
    "\n"
    " Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
    " given to sigraise.\n"
    "\n";

static const char help_write[] =
    " writes a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " -b, -- write to the VM state rather than the virtual disk\n"
    " -c, -- write compressed data with blk_write_compressed\n"
    " -f, -- use Force Unit Access semantics\n"
    " -n, -- with -z, don't allow slow fallback\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- use different pattern to fill file\n"
    " -s, -- use a pattern file to fill the write buffer\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes using blk_co_pwrite_zeroes\n"
    "\n";

static const char help_writev[] =
    " writes a range of bytes from the given offset source from multiple buffers\n"
    "\n"
    " Example:\n"
    " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
    "\n"
    " Writes into a segment of the currently open file, using a buffer\n"
    " filled with a set pattern (0xcdcdcdcd).\n"
    " -P, -- use different pattern to fill file\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";

/* Sorted by name: "help" lists them in this order. */
static const struct io_cmd commands[] = {
    { "abort", io_cmd_abort, 0, 0, false, false, NULL,
      "simulate a program crash using abort(3)", NULL },
    { "aio_flush", io_cmd_aio_flush, 0, 0, true, false, NULL,
      "completes all outstanding aio requests", NULL },
    { "aio_read", io_cmd_aio_read, 2, -1, true, false, "[-Ciqv] [-P pattern] off len [len..]",
      "asynchronously reads a number of bytes", help_aio_read },
    { "aio_write", io_cmd_aio_write, 2, -1, true, true,
      "[-Cfiquz] [-P pattern] off len [len..]",
      "asynchronously writes a number of bytes", help_aio_write },
    { "alloc", io_cmd_alloc, 1, 2, true, false, "offset [count]",
      "checks if offset is allocated in the file", NULL },
    { "break", io_cmd_break, 2, 2, true, false, "event tag",
      "sets a breakpoint on event and tags the stopped request as tag", NULL },
    { "close", io_cmd_close, 0, 0, true, false, NULL, "close the current open file", NULL },
    { "discard", io_cmd_discard, 2, -1, true, true, "[-Cq] off len",
      "discards a number of bytes at a specified offset", help_discard },
    { "flush", io_cmd_flush, 0, 0, true, false, NULL,
      "flush all in-core file state to disk", NULL },
    { "help", io_cmd_help, 0, 1, false, false, "[command]",
      "help for one or all commands", NULL },
    { "info", io_cmd_info, 0, 0, true, false, NULL,
      "prints information about the current file", NULL },
    { "length", io_cmd_length, 0, 0, true, false, NULL,
      "gets the length of the current file", NULL },
    { "map", io_cmd_map, 0, 0, true, false, "",
      "prints the allocated areas of a file", NULL },
    { "open", io_cmd_open, 1, -1, false, false,
      "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
      "open the file specified by path", help_open },
    { "quit", io_cmd_quit, 0, -1, false, false, NULL, "exit the program", NULL },
    { "read", io_cmd_read, 2, -1, true, false,
      "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset", help_read },
    { "readv", io_cmd_readv, 2, -1, true, false, "[-Cqv] [-P pattern] off len [len..]",
      "reads a number of bytes at a specified offset", help_readv },
    { "remove_break", io_cmd_remove_break, 1, 1, true, false, "tag",
      "remove a breakpoint by tag", NULL },
    { "reopen", io_cmd_reopen, 0, -1, true, false, "[(-r|-w)] [-c cache] [-o options]",
      "reopens an image with new options", help_reopen },
    { "resume", io_cmd_resume, 1, 1, true, false, "tag",
      "resumes the request tagged as tag", NULL },
    { "sigraise", io_cmd_sigraise, 1, 1, false, false, "signal", "raises a signal",
      help_sigraise },
    { "sleep", io_cmd_sleep, 1, 1, false, false, NULL,
      "waits for the given value in milliseconds", NULL },
    { "truncate", io_cmd_truncate, 1, 3, true, true, "[-m prealloc_mode] off",
      "truncates the current file at the given offset", NULL },
    { "wait_break", io_cmd_wait_break, 1, 1, true, false, "tag",
      "waits for the suspension of a request", NULL },
    { "write", io_cmd_write, 2, -1, true, true,
      "[-bcCfnquz] [-P pattern | -s source_file] off len",
      "writes a number of bytes at a specified offset", help_write },
    { "writev", io_cmd_writev, 2, -1, true, true, "[-Cfq] [-P pattern] off len [len..]",
      "writes a number of bytes at a specified offset", help_writev },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

const struct io_cmd *
io_find_cmd(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static void
print_oneline(const struct io_cmd *cmd)
{
    printf("%s ", cmd->name);
    if (cmd->args)
        printf("%s ", cmd->args);
    printf("-- %s\n", cmd->oneline);
}

int
io_usage(const struct io_cmd *cmd)
{
    print_oneline(cmd);
    return -1;
}

int
io_cmd_help(struct io_state *s, int argc, char **argv)
{
    const struct io_cmd *cmd;

    (void)s;
    if (argc == 1) {
        for (size_t i = 0; i < N_COMMANDS; i++)
            print_oneline(&commands[i]);
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    if (!(cmd = io_find_cmd(argv[1]))) {
        printf("command %s not found\n", argv[1]);
        return -1;
    }
    print_oneline(cmd);
    if (cmd->help)
        printf("\n%s", cmd->help);
    return 0;
}

static bool
check_argcount(const struct io_cmd *cmd, int argc)
{
    int n = argc - 1;

    if (n >= cmd->argmin && (cmd->argmax == -1 || n <= cmd->argmax))
        return true;
    if (cmd->argmax == -1)
        fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", n,
                cmd->name, cmd->argmin);
    else if (cmd->argmin == cmd->argmax)
        fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", n,
                cmd->name, cmd->argmin);
    else
        fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
                n, cmd->name, cmd->argmin, cmd->argmax);
    return false;
}

static int
run_command(struct io_state *s, int argc, char **argv)
{
    const struct io_cmd *cmd = io_find_cmd(argv[0]);

    if (!cmd) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -1;
    }
    if (cmd->needs_file && !s->node) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -1;
    }
    if (!check_argcount(cmd, argc))
        return -1;
    if (cmd->is_write && vimg_node_is_read_only(s->node)) {
        tool_error("Block node is read-only");
        return -1;
    }
    /* optind 0 makes glibc's getopt start over, forgetting the last command's state. */
    optind = 0;
    return cmd->fn(s, argc, argv) < 0 ? -1 : 0;
}

/* Words are separated by runs of spaces only, as qemu-io splits them. */
int
io_run_line(struct io_state *s, const char *line)
{
    char *copy = strdup(line), *save = NULL, *word;
    char **argv = calloc(strlen(line) / 2 + 2, sizeof(*argv));
    int argc = 0, ret = 0;

    if (!copy || !argv) {
        free(copy);
        free(argv);
        tool_error("Out of memory");
        return -1;
    }
    for (word = strtok_r(copy, " ", &save); word; word = strtok_r(NULL, " ", &save))
        argv[argc++] = word;
    if (argc > 0)
        ret = run_command(s, argc, argv);
    free(argv);
    free(copy);
    return ret;
}

void
io_drain(struct io_state *s)
{
    for (size_t i = 0; i < s->n_pending; i++) {
        fputs(s->pending[i], stdout);
        free(s->pending[i]);
    }
    free(s->pending);
    s->pending = NULL;
    s->n_pending = 0;
}
