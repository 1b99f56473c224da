"""Path facts: what a file's path adds to the remembered result for its content.

The classifier parses each content once and remembers the result by hash, but some
facts belong to where the content lies, not to the bytes: the git repository a source
file, a `git archive` or a bundle comes from, keywords in the file name, and whether the
file is a repository's internals (under `.git/`, never read). They are added on every
call and never cached with the content, so a copy elsewhere gets its own. Kept apart
from `classifier` (open, hash, parse, remember), which calls `artefact` last.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

from agent.classify import repository, source
from agent.classify.keywords import KeywordMatcher
from agent.classify.lineage import Known
from agent.events import Artefact, CategoryMatch, Tag


def artefact(
    matcher: KeywordMatcher,
    path: str,
    sha: str,
    size: int,
    known: Known,
    parents: tuple[str, ...],
    reason: str | None,
) -> Artefact:
    """The artefact at `path`: the content's remembered result, its source-code and
    archive tags named after their git repository, and keywords in the file name."""
    tags = tuple(_with_git(t, path) for t in known.tags)
    kinds = tuple(dict.fromkeys(t.kind for t in tags))
    index = matcher.index
    counts: Counter[int] = Counter({index[code]: n for code, n in known.counts if code in index})
    counts.update(matcher.counts([os.path.basename(path)]))
    matches: tuple[CategoryMatch, ...] = matcher.matches(counts, kinds)
    if known.matches and not known.counts:  # inherited from the store as matches
        matches = known.matches
    return Artefact(
        sha256=sha,
        size=size,
        content_type=known.content_type,
        tags=tags,
        matches=matches,
        parents=parents,
        skipped=reason,
    )


_GIT_ARCHIVE_FORMATS = frozenset({"tar", "tar.gz", "tgz", "zip"})


def _archive_repository(tag: Tag, path: str) -> Tag:
    """A `git archive` output named after its repository, by the commit git wrote into it."""
    if "member" in tag.details or "git_commit" in tag.details:
        return tag
    commit = repository.archive_commit(path)
    repo = repository.by_commit(commit) if commit else None
    if commit is None:
        return tag
    details = {**tag.details, "git_commit": commit}
    evidence = f"{tag.evidence}, git archive of commit {commit[:12]}"
    if repo is not None:
        details.update(git_remote=repo.remote, git_root=repo.root, repository=repo.name)
        evidence += f" of repository {repo.remote or repo.name}"
    return replace(tag, evidence=evidence, details=details)


def _bundle_repository(tag: Tag, path: str) -> Tag:
    """A git bundle named after its repository: the one whose HEAD is the bundle's first
    ref (seen when git read its internals to write it), else the tree it was written in."""
    commit = tag.details.get("git_commit")
    repo = repository.by_commit(commit) if isinstance(commit, str) else None
    if repo is None:
        repo = repository.repository_in(os.path.dirname(os.path.abspath(path)))
        if repo is not None and repo.commit != commit:
            repo = None
    if repo is None:
        return tag
    where = repo.remote or f"local repository {repo.name}"
    details = {**tag.details, "git_remote": repo.remote, "git_root": repo.root}
    details["repository"] = repo.name
    return replace(
        tag, evidence=f"history of git repository {where} in a git bundle", details=details
    )


def git_internal(path: str, size: int) -> Artefact | None:
    """A file under `.git/` or in a bare repository: part of its repository, one tag.

    Not hashed or read: config, refs and packfiles are not documents of their own, and a
    push reads hundreds of them.
    """
    tag = repository.internal_tag(path)
    if tag is None:
        return None
    return Artefact(sha256=None, size=size, content_type="application/x-git-internal", tags=(tag,))


def _with_git(tag: Tag, path: str) -> Tag:
    if tag.kind == "source_code" and tag.details.get("detector") == "git_bundle":
        return _bundle_repository(tag, path)
    if tag.kind == "archive" and tag.details.get("format") in _GIT_ARCHIVE_FORMATS:
        return _archive_repository(tag, path)
    if tag.kind != "source_code" or tag.details.get("by_name") or tag.details.get("detector"):
        return tag
    if "git_root" in tag.details or "member" in tag.details:
        return tag
    # the fresh tag is the whole answer (the same kind): no dataclasses.replace (3 µs)
    return source.source_tag(str(tag.details.get("language")), path)
