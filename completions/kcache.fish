# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kcache_global_optspecs
    string join \n c/config= b/backend= url= hosts= prefix= v/verbose q/quiet h/help V/version
end

function __fish_kcache_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kcache_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kcache_using_subcommand
    set -l cmd (__fish_kcache_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kcache -n "__fish_kcache_needs_command" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_needs_command" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_needs_command" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_needs_command" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_needs_command" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_needs_command" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_needs_command" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_needs_command" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "migrate" -d 'Create what the backend needs (tables, index, function); idempotent'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "get" -d 'Print the value of KEY (status 1 if there is none)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "set" -d 'Store VALUE under KEY for TTL'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "ttl" -d 'Print the seconds KEY has left (-1: no expiry; -2 and status 1: no such key)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "expire" -d 'Give an existing entry a new TTL (status 1 if there is none)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "delete" -d 'Remove KEY and print the value it had (status 1 if there was none)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "flush" -d 'Remove every entry (with a prefix: only the entries under it, where the backend can)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "keys" -d 'List the live keys (prefix stripped) that match PATTERN, one per line'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "ping" -d 'Check that the backend answers (write, read and delete a heartbeat key)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "purge" -d 'Remove expired entries now (SQL backends; elsewhere there is nothing to do)'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "stats" -d 'Show what the cache holds under the prefix, and its servers\' own figures'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "batch" -d 'Run many commands from standard input over one set of connections'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "dump" -d 'Write every live entry that matches PATTERN as one JSON line'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "load" -d 'Write the entries of a dump read from standard input'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "copy" -d 'Copy the live entries into the cache that CONFIG describes'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "diff" -d 'Compare the live entries with the cache that CONFIG describes'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "memo" -d 'Run COMMAND, or replay its cached output and exit status'
complete -c kcache -n "__fish_kcache_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -l dry-run -d 'Print what would be done (the SQL, or that the schema is up to date); change nothing'
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand migrate" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand get" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand get" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand get" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand get" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand get" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand get" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand get" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand get" -l json -d 'Print the value as a JSON document, even when it is a string'
complete -c kcache -n "__fish_kcache_using_subcommand get" -s n -l no-newline -d 'Do not print the trailing newline'
complete -c kcache -n "__fish_kcache_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand get" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand set" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand set" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand set" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand set" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand set" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand set" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand set" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand set" -l json -d 'Parse VALUE as JSON instead of storing it as a string'
complete -c kcache -n "__fish_kcache_using_subcommand set" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand set" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -l ms -d 'Print milliseconds instead of seconds'
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand ttl" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand expire" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand expire" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand expire" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand expire" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand delete" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand delete" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand delete" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -l json -d 'Print the value as a JSON document, even when it is a string'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s n -l no-newline -d 'Do not print the trailing newline'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand delete" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l match -d 'Remove only the entries whose key (prefix stripped) matches this glob' -r
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l all -d 'Remove everything, whatever the prefix'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -l dry-run -d 'With --match: print the keys that would be removed, remove nothing'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand flush" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l limit -d 'Stop after N keys' -r
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l ttl -d 'Append a tab and the seconds left, as `ttl` prints them (-1: no expiry)'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s 0 -l null -d 'End each key with a NUL byte instead of a newline (for xargs -0)'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -l json -d 'One JSON object per line: {"key": K, "ttl": T}, T in seconds or null'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand keys" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand ping" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand ping" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand ping" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand ping" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand purge" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand purge" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand purge" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand purge" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand stats" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand stats" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand stats" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -l json -d 'Print one JSON object instead of a table'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -l prometheus -d 'Print the Prometheus text exposition format (for node_exporter\'s textfile collector)'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s k -l keep-going -d 'Report a server that cannot be reached as down (up: false) instead of failing'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand stats" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand batch" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand batch" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand batch" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s j -l jobs -d 'Run on up to N connections at once (commands on one key keep their order)' -r
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s k -l keep-going -d 'Go on after a command whose status is 2 or more'
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand batch" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand dump" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand dump" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand dump" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand dump" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand load" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand load" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand load" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand load" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand load" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand load" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand load" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand load" -l no-overwrite -d 'Keep a live existing entry instead of overwriting it'
complete -c kcache -n "__fish_kcache_using_subcommand load" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand load" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand copy" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand copy" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand copy" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand copy" -l to -d 'The target cache\'s config file (TOML or Kinto INI), read alone' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand copy" -l no-overwrite -d 'Keep a live existing entry of the target instead of overwriting it'
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand copy" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand diff" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand diff" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand diff" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand diff" -l to -d 'The other cache\'s config file (TOML or Kinto INI), read alone' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand diff" -l ttl-tolerance -d 'Expiry times this close are equal: 2s, 500ms, 1m' -r
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand diff" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l key -d 'Store the result under KEY (the prefix is prepended) instead of a hash of COMMAND' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l env -d 'Make the value of environment variable NAME part of the key (repeatable)' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l stale -d 'Print a result older than DUR at once and refresh it in the background' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l wait -d 'Wait at most DUR for another caller\'s run, then run COMMAND [default: TTL, at most 10m]' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l lease -d 'How long the runner\'s lock lasts if it dies (renewed while COMMAND runs)' -r
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l cwd -d 'Make the working directory part of the key'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l discard-failures -d 'Do not store a result whose exit status is not 0'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -l force -d 'Run COMMAND and store its result whatever the cache holds'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand memo" -s V -l version -d 'Print version'
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s c -l config -d 'Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]' -r -F
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s b -l backend -d 'Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path' -r
complete -c kcache -n "__fish_kcache_using_subcommand completions" -l url -d 'Backend URL (postgresql://..., redis://...)' -r
complete -c kcache -n "__fish_kcache_using_subcommand completions" -l hosts -d 'Memcached servers, separated by commas or spaces' -r
complete -c kcache -n "__fish_kcache_using_subcommand completions" -l prefix -d 'Prefix prepended to every key, exactly as Kinto does' -r
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s v -l verbose -d 'Say more: where each setting came from, and the whole cause of an error'
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s q -l quiet -d 'Say less: no warnings'
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kcache -n "__fish_kcache_using_subcommand completions" -s V -l version -d 'Print version'
