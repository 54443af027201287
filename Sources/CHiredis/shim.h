// hiredis 0.14 (Debian's libhiredis-dev): synchronous API only; no TLS.
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

// Replies reduced to "an error, or not" (the publisher's XADD replies, whose stream ids it does not keep).
//
// hiredis makes every reply with two allocations (the redisReply and a copy of its string) and frees both
// after: about 300 instructions per record for an id nobody reads. With these object functions swapped into
// the reader for one reply, a reply that is not an error is one shared, never-freed object of type
// REDIS_REPLY_STATUS with a NULL `str` (hiredis never makes such a reply: its strings are always allocated);
// an error at the top level is made as hiredis makes it (freeReplyObject frees it). Free every reply read
// this way with teltonika_free_reply.
static redisReply teltonika_not_an_error_reply = {.type = REDIS_REPLY_STATUS};

static inline int teltonika_is_not_an_error_reply(const redisReply *r) {
    return r->type == REDIS_REPLY_STATUS && r->str == NULL;
}

static inline void *teltonika_error_only_string(const redisReadTask *task, char *str, size_t len) {
    if (task->type != REDIS_REPLY_ERROR || task->parent != NULL) return &teltonika_not_an_error_reply;
    redisReply *r = (redisReply *)calloc(1, sizeof(redisReply));
    if (r == NULL) return NULL;
    r->str = (char *)malloc(len + 1);
    if (r->str == NULL) {
        free(r);
        return NULL;
    }
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    r->type = REDIS_REPLY_ERROR;
    return r;
}

static inline void *teltonika_error_only_array(const redisReadTask *task, int elements) {
    (void)task;
    (void)elements;
    return &teltonika_not_an_error_reply;
}

static inline void *teltonika_error_only_integer(const redisReadTask *task, long long value) {
    (void)task;
    (void)value;
    return &teltonika_not_an_error_reply;
}

static inline void *teltonika_error_only_nil(const redisReadTask *task) {
    (void)task;
    return &teltonika_not_an_error_reply;
}

/// Frees a reply read with or without the error-only functions.
static inline void teltonika_free_reply(void *reply) {
    if (reply != NULL && !teltonika_is_not_an_error_reply((redisReply *)reply)) freeReplyObject(reply);
}

static redisReplyObjectFunctions teltonika_error_only_functions = {
    teltonika_error_only_string, teltonika_error_only_array, teltonika_error_only_integer, teltonika_error_only_nil,
    teltonika_free_reply,
};

/// Makes `reader` build its next replies with the error-only functions; returns the functions it had.
static inline redisReplyObjectFunctions *teltonika_reader_error_only(redisReader *reader) {
    redisReplyObjectFunctions *previous = reader->fn;
    reader->fn = &teltonika_error_only_functions;
    return previous;
}

/// Gives `reader` back its functions. A reply begun and not finished (only after a failed read: an
/// aggregate's root is kept while its elements arrive) was made with the error-only functions: it is freed
/// here and the reader marked failed, so the other functions never free it.
static inline void teltonika_reader_restore(redisReader *reader, redisReplyObjectFunctions *previous) {
    if (reader->reply != NULL) {
        teltonika_free_reply(reader->reply);
        reader->reply = NULL;
        reader->err = REDIS_ERR_PROTOCOL;
    }
    reader->fn = previous;
}
