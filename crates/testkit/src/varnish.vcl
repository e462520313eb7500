vcl 4.1;

# Purge by surrogate key: walbust's sinks.http format varnish_xkey sends
# `PURGE /` with the keys, space-separated, in an `xkey` header.
import xkey;

backend default {
    .host = "127.0.0.1";
    .port = "8080";
}

# Who may purge: walbust's address.
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.xkey) {
            return (synth(400, "No xkey header"));
        }
        # xkey.softpurge() instead keeps the objects for grace.
        set req.http.n-gone = xkey.purge(req.http.xkey);
        return (synth(200, "Purged " + req.http.n-gone + " objects"));
    }
}

# The backend tags each response with its surrogate keys in an `xkey` header
# (`xkey: category:3 products`); vmod xkey indexes the object by them.
sub vcl_deliver {
    unset resp.http.xkey;
}
