# -*- test-case-name: tests.test_cli_prompt -*-
"""
ESA-style prompts: numbered menus, C{[default]>} prompts, operation menus.

ESA administrators answer by habit, so the prompts look like the ESA's: the
question on its own line, numbered choices, then C{[current]>} where the
bracketed value is what an empty answer keeps (the current setting); yes/no
questions end in C{[Y]>} or C{[N]>}.  A bad answer never passes: the reason
is printed and the prompt repeats.

Every answer is one line of standard input, so a here-document can drive any
dialog.  End of input at any prompt raises L{PromptAborted}: the command
stops and nothing it changed is kept, because a script that ran out of
answers has not said what it wanted.

When standard input is not a terminal the answer is echoed after the prompt,
so that the transcript of a scripted run reads like an interactive one
(C{[1]>3}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar

__all__ = ["BadAnswer", "PromptAborted", "Prompter", "menu_index"]

T = TypeVar("T")


def menu_index(answer: str, count: int) -> int | None:
    """
    The 0-based index that C{answer} gives by number among C{count} items,
    or C{None}.

    Only ASCII digits count, and not too many of them: C{str.isdigit}
    also accepts C{"\u00b2"}, which C{int} refuses, and C{int} refuses a
    number of thousands of digits; either would end the dialog with a
    traceback instead of the reason and the prompt again.
    """
    if answer.isascii() and answer.isdigit() and len(answer) <= 9:
        number = int(answer)
        if 1 <= number <= count:
            return number - 1
    return None


class PromptAborted(Exception):
    """
    Standard input ended while a question was waiting for its answer.
    """


class BadAnswer(ValueError):
    """
    Raised by an answer check; C{str()} is the short reason shown before the
    prompt repeats.
    """


class Prompter:
    """
    Asks questions on a pair of text streams.

    @ivar stdin: where answers come from.
    @ivar stdout: where questions and messages go.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdin = stdin
        self.stdout = stdout
        try:
            self._echo = not stdin.isatty()
        except (AttributeError, ValueError):
            self._echo = True

    def say(self, text: str = "") -> None:
        """
        Print C{text} and a newline.
        """
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def answer(self, prompt: str) -> str:
        """
        Show C{prompt} (without a newline) and read one answer.

        @return: the answer without surrounding whitespace.
        @raise PromptAborted: at end of input.
        """
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.stdout.write("\n")
            self.stdout.flush()
            raise PromptAborted()
        if self._echo:
            self.stdout.write(line if line.endswith("\n") else line + "\n")
            self.stdout.flush()
        return line.strip()

    def ask(
        self,
        question: str,
        check: Callable[[str], T],
        default: str | None = None,
    ) -> T:
        """
        Ask until C{check} accepts the answer.

        @param question: printed on its own line(s) before the prompt; C{""}
            for none.
        @param check: turns the answer into the result, or raises
            L{BadAnswer} with the reason.  An empty answer is replaced by
            C{default} before the check.
        @param default: shown in brackets; what an empty answer means.
        """
        if question:
            self.say(question)
        while True:
            text = self.answer(f"[{default if default is not None else ''}]>")
            if not text and default is not None:
                text = default
            try:
                return check(text)
            except BadAnswer as e:
                self.say(str(e))

    def text(
        self,
        question: str,
        default: str | None = None,
        check: Callable[[str], str] | None = None,
        *,
        required: bool = True,
    ) -> str:
        """
        Ask for a line of text.

        @param required: refuse an empty answer (when there is no default).
        """

        def checked(answer: str) -> str:
            if not answer and required:
                raise BadAnswer("A value is required.")
            return check(answer) if check is not None else answer

        return self.ask(question, checked, default if default is not None else "")

    def integer(
        self,
        question: str,
        default: int | None,
        minimum: int | None = None,
        maximum: int | None = None,
        *,
        parse: Callable[[str], int] | None = None,
        shown: str | None = None,
    ) -> int:
        """
        Ask for a whole number within bounds.

        @param parse: reads the answer (e.g. sizes with a k or M suffix);
            raises L{BadAnswer} or C{ValueError}.
        @param shown: how the default is shown (C{10M}); C{str(default)}
            when not given.
        """

        def check(answer: str) -> int:
            if not answer:
                raise BadAnswer("A number is required.")
            try:
                value = parse(answer) if parse is not None else int(answer)
            except ValueError:
                raise BadAnswer(f"{answer!r} is not a whole number.") from None
            if minimum is not None and maximum is not None and not minimum <= value <= maximum:
                raise BadAnswer(f"Enter a number from {minimum} to {maximum}.")
            if minimum is not None and value < minimum:
                raise BadAnswer(f"Enter a number of at least {minimum}.")
            if maximum is not None and value > maximum:
                raise BadAnswer(f"Enter a number of at most {maximum}.")
            return value

        if shown is None and default is not None:
            shown = str(default)
        return self.ask(question, check, shown)

    def yes_no(self, question: str, default: bool) -> bool:
        """
        Ask a yes/no question on one line: C{Question? [Y]>}.
        """
        while True:
            text = self.answer(f"{question} [{'Y' if default else 'N'}]>").lower()
            if not text:
                return default
            if text in ("y", "yes"):
                return True
            if text in ("n", "no"):
                return False
            self.say("Please answer Y or N.")

    def choose(self, question: str, options: Sequence[str], default: int | None = 0) -> int:
        """
        A numbered menu.

        @param options: the choices, shown as C{1. ...}, C{2. ...}.
        @param default: the index of the current choice (shown 1-based in
            brackets), or C{None} when an answer is required.
        @return: the index chosen.
        """
        if question:
            self.say(question)
        for number, option in enumerate(options, start=1):
            self.say(f"{number}. {option}")

        # Besides its number, a choice may be given by its label, without
        # any parenthesised remark ("RELAXED" for "RELAXED (RELAY)").
        names = [option.split(" (")[0].strip().lower() for option in options]

        def check(answer: str) -> int:
            index = menu_index(answer, len(options))
            if index is not None:
                return index
            if answer.lower() in names:
                return names.index(answer.lower())
            raise BadAnswer(f"Please enter a number from 1 to {len(options)}.")

        return self.ask("", check, None if default is None else str(default + 1))

    def choose_many(
        self, question: str, options: Sequence[str], default: Sequence[int]
    ) -> list[int]:
        """
        A numbered menu where several numbers may be given, separated by
        commas.

        @return: the indexes chosen, in menu order, without repeats.
        """
        if question:
            self.say(question)
        for number, option in enumerate(options, start=1):
            self.say(f"{number}. {option}")

        def check(answer: str) -> list[int]:
            chosen: set[int] = set()
            for part in answer.split(","):
                index = menu_index(part.strip(), len(options))
                if index is None:
                    raise BadAnswer(
                        f"Please enter numbers from 1 to {len(options)}, separated by commas."
                    )
                chosen.add(index)
            return sorted(chosen)

        return self.ask("", check, ",".join(str(i + 1) for i in default))

    def operation(
        self,
        operations: Sequence[tuple[str, str]],
        question: str = "Choose the operation you want to perform:",
    ) -> str | None:
        """
        An ESA operation menu: C{- NAME - what it does.} lines and C{[]>}.
        An operation may be abbreviated to any unambiguous prefix, in any
        case.

        @return: the operation's name as listed, or C{None} for an empty
            answer (go back).
        """
        self.say()
        self.say(question)
        for name, description in operations:
            self.say(f"- {name} - {description}")
        names = [name for name, _ in operations]
        while True:
            answer = self.answer("[]>").upper()
            if not answer:
                return None
            if answer in names:
                return answer
            matches = [name for name in names if name.startswith(answer)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                self.say(f"{answer!r} is ambiguous: {', '.join(matches)}.")
            else:
                self.say(f"Unknown operation {answer!r}: choose one of {', '.join(names)}.")

    def pick(
        self,
        question: str,
        names: Sequence[str],
        *,
        labels: Sequence[str] | None = None,
        listing: bool = True,
    ) -> int | None:
        """
        Choose an item by number or by name (ESA: "Enter the name or number
        of the listener you wish to edit.").

        @param labels: what to show for each item; the names by default.
        @param listing: print the numbered list first.
        @return: the index, or C{None} for an empty answer (go back).
        """
        if listing:
            for number, label in enumerate(labels or names, start=1):
                self.say(f"{number}. {label}")
        self.say(question)
        while True:
            answer = self.answer("[]>")
            if not answer:
                return None
            index = menu_index(answer, len(names))
            if index is not None:
                return index
            if answer in names:
                return list(names).index(answer)
            folded = [n for n in names if n.lower() == answer.lower()]
            if len(folded) == 1:
                return list(names).index(folded[0])
            self.say(f"{answer!r} is not one of the names or numbers listed.")
