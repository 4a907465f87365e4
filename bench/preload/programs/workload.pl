# Allocation-heavy Perl workload for the preload benchmark: hashes, arrays
# and strings. Deterministic (run with PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0,
# and every hash is read in sorted order); prints a short digest.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $state = 12345;
sub rnd {    # small LCG, so the sequence is the same everywhere
    my ($n) = @_;
    $state = ($state * 1103515245 + 12345) % 2147483648;
    return $state % $n;
}

my $total = 0;
my $ctx   = Digest::MD5->new;
for my $rep (1 .. 2) {
    # A hash of records (hash refs holding arrays and strings).
    my %db;
    for my $i (1 .. 30_000) {
        my $key = sprintf("key-%07d", rnd(10_000_000));
        $db{$key} = {
            id    => $i,
            text  => ("abc" x (1 + rnd(40))) . $i,
            list  => [ map { rnd(1000) } 1 .. (1 + rnd(10)) ],
        };
    }
    # Word counting over generated text.
    my @words = map { "w" . rnd(3000) } 1 .. 120_000;
    my $text  = join(" ", @words);
    my %count;
    $count{$_}++ for split / /, $text;
    my @top = (sort { $count{$b} <=> $count{$a} || $a cmp $b } keys %count)[0 .. 9];
    $ctx->add(join(",", map { "$_=$count{$_}" } @top));
    # String building, substitution and joins.
    my @lines;
    for my $k (sort keys %db) {
        my $r = $db{$k};
        my $line = "$k:" . join("-", @{ $r->{list} }) . ":" . $r->{text};
        $line =~ s/abc/xy/g;
        push @lines, $line;
    }
    my $blob = join("\n", @lines);
    $total += length($blob) + scalar(keys %db) + scalar(@words);
    $ctx->add(substr($blob, -2000));
    # Delete half of the hash, then rebuild it bigger.
    my $n = 0;
    for my $k (sort keys %db) { delete $db{$k} if ($n++ % 2) == 0 }
    $db{"extra$_"} = [ ($_) x 20 ] for 1 .. 20_000;
    $total += scalar(keys %db);
}
print "perl $total ", substr($ctx->hexdigest, 0, 32), "\n";
