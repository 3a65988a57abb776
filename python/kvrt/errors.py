"""KvrtError: the one exception the package raises, and kvrt's status codes."""

# Mirrors KVRT_STATUS_LIST in include/kvrt/status.h; tests/test_abi.py
# compares the two, so a code added there must be added here.
STATUS = {
    0: "KVRT_OK", 1: "KVRT_INPROGRESS", -1: "KVRT_ERR_INVALID_ARG",
    -2: "KVRT_ERR_NO_MEMORY", -3: "KVRT_ERR_VERSION_MISMATCH", -4: "KVRT_ERR_UNSUPPORTED",
    -5: "KVRT_ERR_NOT_FOUND", -6: "KVRT_ERR_BUFFER_TOO_SMALL", -7: "KVRT_ERR_BUSY",
    -8: "KVRT_ERR_INTERNAL", -9: "KVRT_ERR_IO", -10: "KVRT_ERR_TIMEOUT",
    -11: "KVRT_ERR_CANCELED", -12: "KVRT_ERR_BAD_STATE", -13: "KVRT_ERR_OVERFLOW",
    -14: "KVRT_ERR_PARSE", -100: "KVRT_ERR_NO_BLOCKS", -101: "KVRT_ERR_UNKNOWN_BLOCK",
    -102: "KVRT_ERR_UNKNOWN_TABLE", -103: "KVRT_ERR_BAD_LAYOUT",
    -104: "KVRT_ERR_TABLE_TOO_LONG", -105: "KVRT_ERR_NO_TABLES",
    -300: "KVRT_ERR_UNKNOWN_REQUEST", -301: "KVRT_ERR_NO_STEP", -302: "KVRT_ERR_TOKEN_COUNT",
    -303: "KVRT_ERR_REQUEST_LIMIT", -400: "KVRT_ERR_CONNECT", -401: "KVRT_ERR_PEER_FAILED",
    -402: "KVRT_ERR_AUTH", -403: "KVRT_ERR_REMOTE_ACCESS", -404: "KVRT_ERR_PROTOCOL",
    -405: "KVRT_ERR_UNKNOWN_REGION", -406: "KVRT_ERR_INTEGRITY", -407: "KVRT_ERR_NO_DEVICE",
    -500: "KVRT_ERR_DEVICE", -501: "KVRT_ERR_NO_GPU", -700: "KVRT_ERR_RESYNC",
    -701: "KVRT_ERR_UNKNOWN_NODE", -702: "KVRT_ERR_UNKNOWN_MODEL",
    -703: "KVRT_ERR_STALE_EPOCH", -704: "KVRT_ERR_COORDINATOR",
}
globals().update({name[5:]: value for value, name in STATUS.items()})  # OK, ERR_NO_BLOCKS...


class KvrtError(Exception):
    """A kvrt call failed, or the package refused a call before making it.

    status: the kvrt_status_t value; name: its enum name ("KVRT_ERR_NO_BLOCKS");
    detail: kvrt_ctx_last_error() text, or the package's own reason;
    function: the C function (or Python method) that failed.
    """

    def __init__(self, status, detail="", function=None):
        self.status = int(status)
        self.name = status_name(self.status)
        self.detail = detail
        self.function = function
        where = "%s: " % function if function else ""
        super().__init__("%s%s%s" % (where, self.name, ": " + detail if detail else ""))

    def __reduce__(self):  # pickle and copy: across processes (multiprocessing, Ray)
        return (type(self), (self.status, self.detail, self.function))


def status_name(status):
    return STATUS.get(int(status), "KVRT_STATUS_%d" % int(status))
